"""A session record and its bytes: a JSON header and raw tensor bytes, never pickle.

Layout (all integers little-endian):

    b"RNNS" | format version (u8) | header length (u32) | header (UTF-8 JSON) | tensor bytes

The header lists each state tensor's dtype and shape, in order; the tensor bytes are
those tensors, C-contiguous, one after another. Decoding checks every field and every
length and raises SessionCodecError naming the problem.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from model.network import State, state_from_tensors, state_tensors

MAGIC = b"RNNS"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sBI")  # magic, format version, header length
MAX_HEADER_BYTES = 1 << 22

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class SessionCodecError(ValueError):
    """Bytes that are not a readable session record."""


@dataclass(frozen=True)
class SessionRecord:
    """Everything needed to continue a sequence without recomputing it.

    `state` has consumed every token but `pending_id`; `pending_text` is text received
    but not yet tokenised (a word model's unfinished last word); `pending_bytes` the
    bytes of a character a generation began and did not finish (a byte-level subword
    model cut by max_tokens), which the next generation continues. `history` holds the
    most recent token ids, for the repetition penalty.
    """

    model: str
    state: tuple[Tensor, ...]  # one tensor (RNN/GRU) or (h, c) (LSTM), each (layers, 1, hidden), on CPU
    pending_id: int
    token_count: int
    ttl: float  # seconds; the TTL slides, starting again at every use
    created_at: float  # Unix time
    updated_at: float
    pending_text: str = ""
    pending_bytes: bytes = b""
    history: tuple[int, ...] = field(default_factory=tuple)
    owner: str | None = None  # digest of the API key that created it (None: made without keys)

    @classmethod
    def from_state(cls, state: State, **fields: Any) -> SessionRecord:
        """A record of `state` in float32, whatever the model computes in: one wire format for every replica."""
        tensors = tuple(t.detach().to("cpu", torch.float32, copy=True).contiguous() for t in state_tensors(state))
        return cls(state=tensors, **fields)

    def model_state(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> State:
        """The state as the model takes it: one tensor, or an (h, c) pair."""
        return state_from_tensors([t.to(device=device, dtype=dtype) for t in self.state])

    def updated(self, **changes: Any) -> SessionRecord:
        return replace(self, **changes)


def encode_session(record: SessionRecord) -> bytes:
    header = {
        "model": record.model,
        "pending_id": record.pending_id,
        "pending_text": record.pending_text,
        "pending_bytes": record.pending_bytes.hex(),
        "token_count": record.token_count,
        "history": list(record.history),
        "owner": record.owner,
        "ttl": record.ttl,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "byteorder": "little",
        "tensors": [{"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)} for t in record.state],
    }
    header_bytes = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)), header_bytes]
    parts += [_tensor_bytes(t) for t in record.state]
    return b"".join(parts)


def decode_session(data: bytes) -> SessionRecord:
    if len(data) < _PREFIX.size:
        raise SessionCodecError(f"record is {len(data)} bytes, shorter than its {_PREFIX.size}-byte prefix")
    magic, version, header_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SessionCodecError(f"record does not start with {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise SessionCodecError(f"record format version {version} is not supported (expected {FORMAT_VERSION})")
    start = _PREFIX.size
    if header_length > min(MAX_HEADER_BYTES, len(data) - start):
        raise SessionCodecError(f"header length {header_length} runs past the record's {len(data)} bytes")
    try:
        header = json.loads(data[start : start + header_length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionCodecError(f"header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SessionCodecError("header is not a JSON object")
    if header.get("byteorder") != "little" or sys.byteorder != "little":
        raise SessionCodecError("only little-endian records on little-endian machines are supported")
    state = _read_tensors(header.get("tensors"), data, start + header_length)
    return SessionRecord(
        model=_field(header, "model", str),
        state=state,
        pending_id=_field(header, "pending_id", int),
        token_count=_field(header, "token_count", int),
        ttl=float(_field(header, "ttl", (int, float))),
        created_at=float(_field(header, "created_at", (int, float))),
        updated_at=float(_field(header, "updated_at", (int, float))),
        pending_text=_field(header, "pending_text", str),
        pending_bytes=pending_bytes_of(header.get("pending_bytes", "")),
        history=tuple(_int_list(header.get("history"), "history")),
        owner=_owner(header.get("owner")),
    )


def _tensor_bytes(tensor: Tensor) -> bytes:
    if tensor.dtype not in DTYPE_NAMES:
        raise SessionCodecError(f"state dtype {tensor.dtype} cannot be stored")
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()  # the raw bytes, whatever the dtype


def _read_tensors(specs: Any, data: bytes, offset: int) -> tuple[Tensor, ...]:
    if not isinstance(specs, list) or len(specs) not in (1, 2):
        raise SessionCodecError("'tensors' must list one or two state tensors")
    buffer = bytearray(data[offset:])  # writable, so torch shares it without a warning
    tensors = []
    position = 0
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES:
            raise SessionCodecError(f"tensor spec {spec!r} has no known dtype ({', '.join(DTYPES)})")
        dtype = DTYPES[spec["dtype"]]
        shape = _int_list(spec.get("shape"), "tensor shape")
        if len(shape) != 3 or min(shape) < 1:
            raise SessionCodecError(f"state tensor shape {shape} is not (layers, 1, hidden)")
        size = math.prod(shape) * dtype.itemsize
        if position + size > len(buffer):
            raise SessionCodecError(f"tensor data ends after {len(buffer)} bytes, {position + size} needed")
        raw = torch.frombuffer(buffer, dtype=torch.uint8, count=size, offset=position)
        tensors.append(raw.clone().view(dtype).reshape(shape))
        position += size
    if position != len(buffer):
        raise SessionCodecError(f"{len(buffer) - position} unexpected bytes after the tensor data")
    if len(tensors) == 2 and tensors[0].shape != tensors[1].shape:
        raise SessionCodecError(f"h and c shapes differ: {list(tensors[0].shape)} vs {list(tensors[1].shape)}")
    return tuple(tensors)


def _field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SessionCodecError(f"header field {name!r} is missing or has the wrong type")
    return value


def _owner(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SessionCodecError("header field 'owner' must be a string or null")
    return value


def _int_list(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise SessionCodecError(f"{what} must be a list of integers")
    return value


def pending_bytes_of(value: object) -> bytes:
    """At most 3 bytes, hex: the start of one UTF-8 character (records written before it have none)."""
    try:
        data = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        data = None
    if data is None or len(data) > 3:
        raise SessionCodecError("field 'pending_bytes' is not the hex of at most 3 bytes")
    return data
