"""The checkpoint directory: config.json + model.safetensors + tokenizer.json.

Nothing here unpickles: weights are safetensors, everything else is JSON. Every
failure raises CheckpointError naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from model.network import RNNLM, ModelConfig
from model.tokenizer import Tokenizer, TokenizerError
from model.tokenizers import tokenizer_from_dict

CHECKPOINT_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# mkstemp makes 0600 files; a checkpoint must be readable by a server running as another user.
READABLE = 0o644


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file."""


@dataclass
class Checkpoint:
    """A loaded model with its tokenizer and the metadata from config.json."""

    model: RNNLM
    tokenizer: Tokenizer
    path: Path | None = None
    direction: str = "forward"
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, READABLE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    model: RNNLM,
    tokenizer: Tokenizer,
    training: dict[str, Any] | None = None,
    direction: str = "forward",
) -> Path:
    """Write the three files into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{WEIGHTS_FILE}.")
    os.close(fd)
    save_model(model, tmp)  # handles tied (shared) weights
    os.chmod(tmp, READABLE)
    os.replace(tmp, directory / WEIGHTS_FILE)
    write_json_atomic(directory / TOKENIZER_FILE, tokenizer.to_dict())
    config = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        "direction": direction,
        "training": training or {},
    }
    write_json_atomic(directory / CONFIG_FILE, config)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed and version-checked config.json of a checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = data.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {version!r} (expected {CHECKPOINT_FORMAT_VERSION})")
    for key in ("model", "tokenizer"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"{path}: missing or malformed '{key}' section")
    return data


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and validate a checkpoint directory; the model comes back in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    data = read_config(directory)
    config_path = directory / CONFIG_FILE
    try:
        config = ModelConfig.from_dict(data["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid model config: {exc}") from exc

    tokenizer_path = directory / TOKENIZER_FILE
    try:
        tokenizer = tokenizer_from_dict(_read_json(tokenizer_path))
    except TokenizerError as exc:
        raise CheckpointError(f"{tokenizer_path}: {exc}") from exc
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{tokenizer_path}: {tokenizer.vocab_size} tokens, but {CONFIG_FILE} says vocab_size {config.vocab_size}"
        )
    if tokenizer.kind != data["tokenizer"].get("kind"):
        raise CheckpointError(f"{tokenizer_path}: kind {tokenizer.kind!r} disagrees with {CONFIG_FILE}")

    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing")
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from exc

    model = RNNLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_weights:
        # save_model stores a shared tensor once; either name may be the one kept.
        shared = {"decoder.weight", "embedding.weight"}
        kept = shared & set(weights)
        if not kept:
            raise CheckpointError(f"{weights_path}: missing tensor embedding.weight")
        for name in shared - kept:
            weights[name] = weights[next(iter(kept))]
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        problems = [f"missing tensors {missing}"] if missing else []
        problems += [f"unexpected tensors {extra}"] if extra else []
        raise CheckpointError(f"{weights_path}: {'; '.join(problems)}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(
                f"{weights_path}: tensor {name} has shape {tuple(weights[name].shape)}, config.json implies {shape}"
            )
        if not torch.isfinite(weights[name]).all():
            raise CheckpointError(f"{weights_path}: tensor {name} contains NaN or infinity")
    model.load_state_dict(weights)
    model.to(device).eval()
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        path=directory,
        direction=str(data.get("direction", "forward")),
        training=training or {},
    )


def weights_sha256(directory: str | Path) -> str:
    """The hex SHA-256 of a checkpoint's weights file: what a session state is valid for."""
    digest = hashlib.sha256()
    with (Path(directory) / WEIGHTS_FILE).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
