"""A session as one safetensors file, to take out of a deployment and bring into another.

The file holds what a session needs to continue exactly as it would have:

    tensors   hidden            (layers, 1, hidden_size) the RNN/GRU state, or an LSTM's h
              cell              (layers, 1, hidden_size) an LSTM's c (LSTM only)
              history           (n,) int64, the recent token ids the repetition penalty reads
    metadata  format, format_version, model, checkpoint_sha256, level, cell,
              pending_id, token_count, pending_text (all strings, as safetensors has them)

The state is valid only for the weights it was computed with, so the file names the
checkpoint's sha256 and an import is refused (409) by a model whose weights differ.
Not exported: the owner (an imported session belongs to the key that imports it), the TTL
(the importing server's) and the timestamps. Reading checks every tensor, dtype, shape
and field before anything is created, and never unpickles: safetensors is a JSON header
and raw bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from app.errors import InvalidRequest, NotFound, SessionConflict
from app.models.registry import ModelRegistry, ServedModel
from app.sessions.codec import DTYPE_NAMES, SessionCodecError, SessionRecord, pending_bytes_of

FORMAT = "rnnlm-session"
FORMAT_VERSION = "1"
STATE_NAMES = ("hidden", "cell")  # one tensor (RNN/GRU) or (h, c) (LSTM), in the order the model takes them
HISTORY = "history"
MEDIA_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class SessionExport:
    """A session file, read and checked on its own (not yet against a model)."""

    model: str
    checkpoint_sha256: str
    state: tuple[Tensor, ...]  # each (layers, 1, hidden), on CPU
    pending_id: int
    token_count: int
    pending_text: str
    history: tuple[int, ...]
    pending_bytes: bytes = b""  # a character a generation began (byte-level subword models)

    def record(self, served: ServedModel, ttl: float, now: float, owner: str | None, keep: int) -> SessionRecord:
        """The session record for `served` (checked first: 422 when the file does not fit it).

        `keep` is this server's history length (RNNLM_SESSION_HISTORY_TOKENS): the newest ids are kept.
        """
        check_fits(self, served)
        return SessionRecord(
            model=served.id,
            state=self.state,
            pending_id=self.pending_id,
            token_count=self.token_count,
            ttl=ttl,
            created_at=now,
            updated_at=now,
            pending_text=self.pending_text,
            pending_bytes=self.pending_bytes,
            history=self.history[-keep:] if keep else (),
            owner=owner,
        )


def export_session(record: SessionRecord, served: ServedModel) -> bytes:
    """The session file of a stored session of `served`."""
    tensors = dict(zip(STATE_NAMES, (t.contiguous() for t in record.state), strict=False))
    tensors[HISTORY] = torch.tensor(record.history, dtype=torch.int64)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": record.model,
        "checkpoint_sha256": served.sha256,
        "level": served.level,
        "cell": served.checkpoint.config.cell,
        "pending_id": str(record.pending_id),
        "token_count": str(record.token_count),
        "pending_text": record.pending_text,
        "pending_bytes": record.pending_bytes.hex(),
    }
    return _sorted_header(save(tensors, metadata=metadata))


def read_export(data: bytes) -> SessionExport:
    """The session in a file's bytes; 422 naming the problem when they are not a valid session file."""
    if not data:
        raise _invalid("the body is empty: send the file GET /v1/sessions/{id}/export gave")
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise _invalid(f"the body is not a safetensors file ({exc})") from exc
    metadata = file_metadata(data)
    if metadata.get("format") != FORMAT:
        found = "no 'format' metadata" if "format" not in metadata else f"'format' {metadata['format']!r}"
        raise _invalid(f"a safetensors file with {found}, not {FORMAT!r}: not a session file")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise _invalid(
            f"session file format_version {metadata.get('format_version')!r} is not supported "
            f"(this server reads {FORMAT_VERSION!r})"
        )
    state = _state(tensors, cell=_text(metadata, "cell"))
    history = tensors.get(HISTORY)
    if history is None or history.dtype != torch.int64 or history.dim() != 1:
        raise _invalid(f"tensor {HISTORY!r} must be a one-dimensional int64 tensor of token ids")
    return SessionExport(
        model=_text(metadata, "model"),
        checkpoint_sha256=_text(metadata, "checkpoint_sha256"),
        state=state,
        pending_id=_count(metadata, "pending_id"),
        token_count=_count(metadata, "token_count"),
        pending_text=metadata.get("pending_text", ""),
        history=tuple(history.tolist()),
        pending_bytes=_pending_bytes(metadata.get("pending_bytes", "")),
    )


def _pending_bytes(value: str) -> bytes:
    try:
        return pending_bytes_of(value)
    except SessionCodecError as exc:
        raise _invalid(f"metadata {exc}") from exc


def importing_model(export: SessionExport, models: ModelRegistry, model: str | None) -> ServedModel:
    """The model to continue the file's session: `model`, else the file's; 409 unless its weights made the state."""
    if model is None and export.model not in models.models:
        known = ", ".join(sorted(models.models))
        raise NotFound(
            f"the session file's model {export.model!r} is not loaded here (loaded: {known}); "
            "to continue it with another model of the same weights, name it: ?model=ID",
            model=export.model,
        )
    served = models.get(model or export.model)
    if served.sha256 != export.checkpoint_sha256:
        raise SessionConflict(
            f"the session was computed with checkpoint sha256 {export.checkpoint_sha256}, but model "
            f"{served.id!r} here has sha256 {served.sha256}: a state fits only the weights that made it",
            reason="checkpoint",
            file_sha256=export.checkpoint_sha256,
            model_sha256=served.sha256,
        )
    return served


def check_fits(export: SessionExport, served: ServedModel) -> None:
    """422 unless the state's shape, the token ids and the pending text fit model `served`."""
    config = served.checkpoint.config
    expected = [(config.num_layers, 1, config.hidden_size)] * (2 if config.cell == "lstm" else 1)
    found = [tuple(t.shape) for t in export.state]
    if found != expected:
        raise _invalid(f"state shapes {found} do not fit model {served.id!r} ({config.cell}: expects {expected})")
    for name, ids in (("pending_id", [export.pending_id]), (HISTORY, export.history)):
        outside = [i for i in ids if not 0 <= i < config.vocab_size]
        if outside:
            raise _invalid(
                f"{name} holds token id {outside[0]}, not in model {served.id!r}'s vocabulary (0..{config.vocab_size - 1})"
            )
    if export.pending_text and (served.level == "char" or any(c.isspace() for c in export.pending_text)):
        raise _invalid(
            f"pending_text {export.pending_text[:40]!r} cannot be pending in a {served.level} session "
            "(only a word model keeps one unfinished word, without whitespace)"
        )


def _state(tensors: dict[str, Tensor], cell: str) -> tuple[Tensor, ...]:
    names = STATE_NAMES if cell == "lstm" else STATE_NAMES[:1]
    unexpected = sorted(set(tensors) - {*names, HISTORY})
    if unexpected:
        raise _invalid(f"unexpected tensors {unexpected} for a {cell} session (expected {[*names, HISTORY]})")
    state = []
    for name in names:
        tensor = tensors.get(name)
        if tensor is None:
            raise _invalid(f"tensor {name!r} is missing (a {cell} session has {list(names)})")
        if tensor.dtype not in DTYPE_NAMES:
            raise _invalid(f"tensor {name!r} has dtype {tensor.dtype}, not one of {', '.join(DTYPE_NAMES.values())}")
        if tensor.dim() != 3 or tensor.shape[1] != 1:
            raise _invalid(f"tensor {name!r} has shape {list(tensor.shape)}, not (layers, 1, hidden_size)")
        if not torch.isfinite(tensor).all():
            raise _invalid(f"tensor {name!r} holds NaN or infinity")
        state.append(tensor)
    return tuple(state)


def _sorted_header(data: bytes) -> bytes:
    """The file with its header's keys sorted, so one session always exports the same bytes.

    safetensors writes the metadata in hash-map order, which differs from call to call.
    Sorting the keys of compact JSON keeps its length, so the padding and every tensor's
    offsets stay as they are; should the length differ, the file is left as written.
    """
    (length,) = struct.unpack_from("<Q", data)
    header = data[8 : 8 + length]
    text = json.dumps(json.loads(header), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    padded = text.ljust(length)  # safetensors pads the header with spaces to 8-byte alignment
    return data[:8] + padded + data[8 + length :] if len(padded) == length else data


def file_metadata(data: bytes) -> dict[str, str]:
    """The file's `__metadata__` (str -> str; safetensors.torch.load, which checked the header, drops it)."""
    (length,) = struct.unpack_from("<Q", data)
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    return {str(key): str(value) for key, value in metadata.items()}


def _text(metadata: dict[str, str], name: str) -> str:
    value = metadata.get(name)
    if not value:
        raise _invalid(f"metadata {name!r} is missing")
    return value


def _count(metadata: dict[str, str], name: str) -> int:
    value = _text(metadata, name)
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise _invalid(f"metadata {name!r} is {value[:40]!r}, not a non-negative integer")
    return int(value)


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(f"session file: {message}", field="body")
