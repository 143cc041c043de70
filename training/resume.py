"""The resume state, written beside the checkpoint and never pickled.

`training_state.safetensors` holds the tensors: the latest (not the best) model
weights, the optimizer's per-parameter state flattened to `optim.<index>.<key>`, the
carried hidden state of every training stream, and the torch RNG states as byte
tensors (one per rank). `training_state.json` holds the rest: the config, the position
in the data, the schedule, the optimizer's hyper-parameters, the Python RNG state.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from model.checkpoint import write_json_atomic

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_FORMAT_VERSION = 1


class ResumeError(ValueError):
    """A resume directory that cannot be used; the message names the file."""


@dataclass
class Progress:
    """Where training stands: enough to continue exactly."""

    step: int = 0
    epoch: int = 0  # completed epochs
    window: int = 0  # next window of the current epoch
    tokens_seen: int = 0
    elapsed: float = 0.0  # training seconds so far, across resumes
    best_val_loss: float = float("inf")  # of the saved best checkpoint
    best_step: int = 0
    last_validation_step: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)  # validation figures


@dataclass
class ResumeState:
    config: dict[str, Any]
    progress: Progress
    schedule: dict[str, Any]
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    hidden: list[Tensor]  # full-batch (all ranks) training hidden state tensors
    torch_rng: list[Tensor]  # one per rank
    cuda_rng: list[Tensor] = field(default_factory=list)
    python_rng: Any = None


def capture_python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_python_rng(state: list[Any]) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


def save_resume_state(directory: Path, state: ResumeState) -> None:
    """Write both files atomically (tensors first: the JSON marks a complete state)."""
    tensors: dict[str, Tensor] = {}
    for name, tensor in state.model.items():
        tensors[f"model.{name}"] = tensor.detach().cpu().clone()  # clone: tied weights share storage
    optim_json: dict[str, Any] = {"param_groups": state.optimizer["param_groups"], "scalars": {}}
    for index, entry in state.optimizer["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().clone()
            else:
                optim_json["scalars"].setdefault(str(index), {})[key] = value
    for i, tensor in enumerate(state.hidden):
        tensors[f"hidden.{i}"] = tensor.detach().cpu().contiguous()
    for rank, tensor in enumerate(state.torch_rng):
        tensors[f"rng.torch.{rank}"] = tensor
    for i, tensor in enumerate(state.cuda_rng):
        tensors[f"rng.cuda.{i}"] = tensor
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_TENSORS}.")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, directory / STATE_TENSORS)
    write_json_atomic(
        directory / STATE_JSON,
        {
            "format_version": STATE_FORMAT_VERSION,
            "config": state.config,
            "progress": state.progress.__dict__,
            "schedule": state.schedule,
            "optimizer": optim_json,
            "python_rng": state.python_rng,
        },
    )


def read_resume_config(directory: Path) -> dict[str, Any]:
    """Only the config of a resume state (to rebuild the run before loading tensors)."""
    return dict(_read_json(directory)["config"])


def load_resume_state(directory: Path) -> ResumeState:
    meta = _read_json(directory)
    path = directory / STATE_TENSORS
    if not path.is_file():
        raise ResumeError(f"{path}: missing")
    try:
        tensors = load_file(path)
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise ResumeError(f"{path}: not a readable safetensors file ({exc})") from exc

    def group(prefix: str) -> dict[str, Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    optim_state: dict[int, dict[str, Any]] = {}
    for key, tensor in group("optim.").items():
        index, _, name = key.partition(".")
        optim_state.setdefault(int(index), {})[name] = tensor
    for index, scalars in meta["optimizer"]["scalars"].items():
        optim_state.setdefault(int(index), {}).update(scalars)
    return ResumeState(
        config=meta["config"],
        progress=Progress(**meta["progress"]),
        schedule=meta["schedule"],
        model=group("model."),
        optimizer={"state": optim_state, "param_groups": meta["optimizer"]["param_groups"]},
        hidden=_by_number(group("hidden.")),
        torch_rng=_by_number(group("rng.torch.")),
        cuda_rng=_by_number(group("rng.cuda.")),
        python_rng=meta["python_rng"],
    )


def _by_number(tensors: dict[str, Tensor]) -> list[Tensor]:
    """Values of {"0": t0, "1": t1, ...} in numeric order."""
    return [tensors[k] for k in sorted(tensors, key=int)]


def _read_json(directory: Path) -> dict[str, Any]:
    path = directory / STATE_JSON
    if not path.is_file():
        raise ResumeError(f"{path}: missing (is {directory} the --out directory of a training run?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format_version") != STATE_FORMAT_VERSION:
        raise ResumeError(f"{path}: unsupported or missing format_version (expected {STATE_FORMAT_VERSION})")
    return data
