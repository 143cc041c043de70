"""The loaded models: one checkpoint and one engine per directory of the models dir."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from app.engine import Engine, Hooks
from app.errors import NotFound
from app.metrics import Metrics
from app.pairing import PairingError, Pairs, find_pairs
from app.settings import Settings
from model.checkpoint import CONFIG_FILE, Checkpoint, CheckpointError, load_checkpoint, weights_sha256
from model.network import count_parameters

logger = logging.getLogger("app")


class ModelsDirError(RuntimeError):
    """The models directory cannot be served (missing, empty, or a bad checkpoint)."""


@dataclass
class ServedModel:
    id: str
    checkpoint: Checkpoint
    engine: Engine
    sha256: str  # of the weights file, read at load: a session state fits only these weights

    @property
    def level(self) -> str:
        return self.checkpoint.tokenizer.kind

    @property
    def parameters(self) -> int:
        return count_parameters(self.checkpoint.model)


class ModelRegistry:
    """Models by id, with the default one; owns their engines."""

    def __init__(self, models: dict[str, ServedModel], default_id: str, pairs: Pairs | None = None) -> None:
        self.models = models
        self.default_id = default_id
        self.pairs = pairs or Pairs(backward_of={}, refused={})  # forward/backward partners for /v1/fill

    def get(self, model_id: str | None) -> ServedModel:
        model_id = model_id or self.default_id
        served = self.models.get(model_id)
        if served is None:
            known = ", ".join(sorted(self.models))
            raise NotFound(f"model {model_id!r} is not loaded (loaded: {known})", model=model_id)
        return served

    def start(self) -> None:
        for served in self.models.values():
            served.engine.start()

    def close(self) -> None:
        for served in self.models.values():
            served.engine.close()

    @property
    def ready(self) -> bool:
        return all(served.engine.alive for served in self.models.values())


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelsDirError("RNNLM_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def load_models(settings: Settings, metrics: Metrics) -> ModelRegistry:
    """Load every checkpoint directory under `settings.models_dir` (blocking; run it off the loop)."""
    root = settings.models_dir
    if not root.is_dir():
        raise ModelsDirError(f"models directory {root} does not exist (set RNNLM_MODELS_DIR)")
    directories = sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())
    if not directories:
        raise ModelsDirError(f"models directory {root} holds no checkpoint directories (each needs {CONFIG_FILE})")
    device = resolve_device(settings.device)
    models: dict[str, ServedModel] = {}
    for directory in directories:
        try:
            models[directory.name] = _serve(directory, device, settings, metrics)
        except CheckpointError as exc:  # the message names the file and the problem
            if not settings.skip_bad_models:
                raise ModelsDirError(
                    f"cannot load model {directory.name!r}: {exc} (RNNLM_SKIP_BAD_MODELS=true skips such a model)"
                ) from exc
            logger.error("skipping model %s (RNNLM_SKIP_BAD_MODELS=true): %s", directory.name, exc)
            continue
        logger.info("loaded model %s from %s on %s", directory.name, directory, device)
    if not models:
        raise ModelsDirError(f"no checkpoint in {root} could be loaded (each one skipped is logged above)")
    default_id = settings.default_model or next(iter(models))
    if default_id not in models:
        raise ModelsDirError(f"RNNLM_DEFAULT_MODEL={default_id!r} is not in {root} (found: {', '.join(models)})")
    try:
        pairs = find_pairs({model_id: served.checkpoint for model_id, served in models.items()}, settings.fill_pairs)
    except PairingError as exc:
        raise ModelsDirError(str(exc)) from exc
    return ModelRegistry(models, default_id, pairs)


def _serve(directory: Path, device: torch.device, settings: Settings, metrics: Metrics) -> ServedModel:
    checkpoint = load_checkpoint(directory, device=device)  # CheckpointError names the file
    model_id = directory.name
    hooks = Hooks(
        on_step=metrics.batch_size.labels(model_id).observe,
        on_active=metrics.active_sequences.labels(model_id).set,
        on_tokens=metrics.tokens_generated.labels(model_id).inc,
        on_prefix_lookup=metrics.prefix_lookup(model_id),
        on_prefix_bytes=metrics.prefix_cache_bytes.labels(model_id).set,
    )
    engine = Engine(checkpoint, settings, hooks)
    return ServedModel(id=model_id, checkpoint=checkpoint, engine=engine, sha256=weights_sha256(directory))
