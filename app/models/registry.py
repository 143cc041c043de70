"""The loaded models: one checkpoint and one engine per directory of the models dir.

The set can change while the server runs (app/models/watcher.py adds and removes
models). It changes only on the event loop, and each change replaces the `models` dict
rather than editing it, so a request sees one consistent set. A removed model leaves
the set at once, but its engine keeps answering the requests already admitted and is
closed once idle (`close_idle`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from app.engine import Engine, Hooks
from app.errors import NotFound
from app.metrics import Metrics
from app.models.pairing import PairingError, Pairs, find_pairs
from app.settings import Settings
from model.checkpoint import CONFIG_FILE, Checkpoint, CheckpointError, load_checkpoint, weights_sha256
from model.network import count_parameters
from model.precision import bf16_supported

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
    def dtype(self) -> Literal["float32", "bfloat16"]:
        """The precision the model computes in (RNNLM_DTYPE, resolved)."""
        return "bfloat16" if self.checkpoint.model.decoder.weight.dtype == torch.bfloat16 else "float32"

    @property
    def level(self) -> str:
        return self.checkpoint.tokenizer.kind

    @property
    def parameters(self) -> int:
        return count_parameters(self.checkpoint.model)


class ModelRegistry:
    """Models by id, with the default one and the fill pairs; owns their engines."""

    def __init__(self, settings: Settings, metrics: Metrics, device: torch.device) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = device
        self.dtype = resolve_dtype(settings.dtype, device)
        self.models: dict[str, ServedModel] = {}
        # RNNLM_DEFAULT_MODEL stays the default while it is absent (a request naming no model
        # gets a 404 naming it); unset, the default is kept while loaded, else the first by name.
        self.default_id: str | None = settings.default_model
        self.pairs = Pairs(backward_of={}, refused={})  # forward/backward partners for /v1/fill
        self.skipped: set[str] = set()  # directories that could not be loaded at start
        self._retired: list[ServedModel] = []  # removed, engine still open for its running requests

    def get(self, model_id: str | None) -> ServedModel:
        model_id = model_id or self.default_id
        if model_id is None:  # no default set, and every model removed
            raise NotFound("no model is loaded", model=None)
        served = self.models.get(model_id)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"model {model_id!r} is not loaded (loaded: {known})", model=model_id)
        return served

    def add(self, served: ServedModel) -> None:
        """Serve a loaded model (its engine started); the fill pairs are worked out again."""
        self.models = {**self.models, served.id: served}
        self._changed()

    def remove(self, model_id: str) -> None:
        """New requests no longer find the model; the engine finishes the admitted ones first."""
        models = dict(self.models)
        served = models.pop(model_id)
        self.models = models
        self._retired.append(served)
        self._changed()

    def idle_retired(self) -> list[ServedModel]:
        """The removed models whose engines have nothing left to answer, taken out of the registry's care."""
        idle = [served for served in self._retired if served.engine.idle]
        self._retired = [served for served in self._retired if served not in idle]
        return idle

    def close_retired(self, retired: list[ServedModel]) -> None:
        """Close the engines of `idle_retired()` and drop their metrics (blocking; run it off the loop)."""
        for served in retired:
            served.engine.close()
            if served.id not in self.models:  # not loaded again meanwhile under the same name
                self.metrics.forget_model(served.id)

    def start(self) -> None:
        for served in self.models.values():
            served.engine.start()

    def close(self) -> None:
        for served in [*self.models.values(), *self._retired]:
            served.engine.close()

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(served.engine.alive for served in self.models.values())

    @property
    def accepting(self) -> bool:
        """No loaded model's engine refuses work now (a full one answers 429 until rows free up)."""
        return not any(served.engine.refusing for served in self.models.values())

    def _changed(self) -> None:
        if not self.settings.default_model and self.default_id not in self.models:
            self.default_id = min(self.models, default=None)
        checkpoints = {model_id: served.checkpoint for model_id, served in self.models.items()}
        try:
            self.pairs = find_pairs(checkpoints, self.settings.fill_pairs)
        except PairingError as exc:  # fatal at start (load_models); while serving, pair by name only
            logger.error("%s; until it can be, /v1/fill pairs models by name only", exc)
            self.pairs = find_pairs(checkpoints, None)


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelsDirError("RNNLM_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """RNNLM_DTYPE: auto = bfloat16 where `device` computes it natively (model/precision.py), else float32."""
    if setting == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def checkpoint_directories(root: Path) -> dict[str, Path]:
    """{model id: directory} of the directories under `root` holding a config.json, by name."""
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / CONFIG_FILE).is_file()}


def load_models(settings: Settings, metrics: Metrics) -> ModelRegistry:
    """Load every checkpoint directory under `settings.models_dir` (blocking; run it off the loop)."""
    root = settings.models_dir
    if not root.is_dir():
        raise ModelsDirError(f"models directory {root} does not exist (set RNNLM_MODELS_DIR)")
    directories = checkpoint_directories(root)
    if not directories:
        raise ModelsDirError(f"models directory {root} holds no checkpoint directories (each needs {CONFIG_FILE})")
    registry = ModelRegistry(settings, metrics, resolve_device(settings.device))
    models: dict[str, ServedModel] = {}
    for model_id, directory in directories.items():
        try:
            models[model_id] = load_model(directory, registry.device, registry.dtype, settings, metrics)
        except CheckpointError as exc:  # the message names the file and the problem
            if not settings.skip_bad_models:
                raise ModelsDirError(
                    f"cannot load model {model_id!r}: {exc} (RNNLM_SKIP_BAD_MODELS=true skips such a model)"
                ) from exc
            logger.error("skipping model %s (RNNLM_SKIP_BAD_MODELS=true): %s", model_id, exc)
            registry.skipped.add(model_id)
            continue
        logger.info("loaded model %s from %s on %s in %s", model_id, directory, registry.device, models[model_id].dtype)
    if not models:
        raise ModelsDirError(f"no checkpoint in {root} could be loaded (each one skipped is logged above)")
    if settings.default_model and settings.default_model not in models:
        raise ModelsDirError(
            f"RNNLM_DEFAULT_MODEL={settings.default_model!r} is not in {root} (found: {', '.join(models)})"
        )
    try:  # an explicit pair that cannot be served stops the start
        registry.pairs = find_pairs({model_id: s.checkpoint for model_id, s in models.items()}, settings.fill_pairs)
    except PairingError as exc:
        raise ModelsDirError(str(exc)) from exc
    registry.models = models
    registry.default_id = settings.default_model or next(iter(models))
    return registry


def load_model(
    directory: Path, device: torch.device, dtype: torch.dtype, settings: Settings, metrics: Metrics
) -> ServedModel:
    """One checkpoint in `dtype` and its engine, not started (blocking; run it off the loop).

    The weights are cast once here; the engine's state pool follows them (init_state takes
    the weights' dtype), and every log-softmax runs on float32 logits whatever the dtype.
    """
    checkpoint = load_checkpoint(directory, device=device)  # CheckpointError names the file
    checkpoint.model.to(dtype)
    model_id = directory.name
    hooks = Hooks(
        on_step=metrics.batch_size.labels(model_id).observe,
        on_active=metrics.active_sequences.labels(model_id).set,
        on_tokens=metrics.tokens_generated.labels(model_id).inc,
        on_prefix_lookup=metrics.prefix_lookup(model_id),
        on_prefix_bytes=metrics.prefix_cache_bytes.labels(model_id).set,
        on_queue=metrics.queue(model_id),
        on_queue_time=metrics.queue_time.labels(model_id).observe,
        on_first_token=metrics.time_to_first_token.labels(model_id).observe,
        on_inter_token=metrics.inter_token_latency.labels(model_id).observe,
    )
    engine = Engine(checkpoint, settings, hooks)
    return ServedModel(id=model_id, checkpoint=checkpoint, engine=engine, sha256=weights_sha256(directory))
