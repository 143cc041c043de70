"""Hot loading: the models directory is polled, and the registry follows what it holds.

Each poll (every `RNNLM_MODELS_POLL_SECONDS`):

1. closes the engines of models removed at an earlier poll once they are idle, so a
   request that looked its model up just before the removal still finds it open;
2. unloads every model whose directory is gone (or lost its config.json): it leaves
   `/v1/models` at once and new requests get the usual 404, while the ones already
   admitted finish;
3. loads every new checkpoint directory whose files have not changed since the previous
   poll (a directory being copied in is left until it is complete), off the event loop,
   and starts its engine. One that fails is logged once and tried again only when its
   files change.

A loaded model is not reloaded when its files change: remove its directory and add it
again. If the models directory itself disappears (an unmounted volume), the models stay.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from app.models.registry import ModelRegistry, checkpoint_directories, load_model
from model.checkpoint import CheckpointError

logger = logging.getLogger("app")

Fingerprint = tuple[tuple[str, int, int], ...]  # (file name, size, mtime in ns) of each file, by name


def fingerprint(directory: Path) -> Fingerprint | None:
    """What a checkpoint directory holds now; None when it vanished meanwhile."""
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file())
        return tuple((p.name, stat.st_size, stat.st_mtime_ns) for p in files for stat in (p.stat(),))
    except OSError:
        return None


def scan(root: Path) -> dict[str, tuple[Path, Fingerprint | None]] | None:
    """{model id: (directory, fingerprint)} of the checkpoint directories; None when `root` is gone."""
    try:
        return {name: (path, fingerprint(path)) for name, path in checkpoint_directories(root).items()}
    except OSError:
        return None


class ModelWatcher:
    """Keeps a registry in step with its models directory, one `poll` at a time."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.root = registry.settings.models_dir
        # A directory not loaded yet, as the previous poll saw it: loaded once it looks the same.
        self._pending: dict[str, Fingerprint] = {}
        # A directory that failed to load, as it was then: tried again once it looks different.
        self._failed: dict[str, Fingerprint | None] = {name: fingerprint(self.root / name) for name in registry.skipped}
        self._root_missing = False

    async def run(self, interval: float) -> None:
        """Poll every `interval` seconds until cancelled; a failed poll is logged and the next one runs."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except Exception:
                logger.exception("watching %s failed; trying again in %g s", self.root, interval)

    async def poll(self) -> None:
        await self._close_idle_retired()
        found = await asyncio.to_thread(scan, self.root)
        if found is None:
            if not self._root_missing:
                logger.warning("models directory %s is gone; the loaded models stay until it is back", self.root)
            self._root_missing = True
            return
        self._root_missing = False
        for model_id in sorted(set(self.registry.models) - set(found)):
            self.registry.remove(model_id)
            logger.info("unloaded model %s (its directory is gone); its running requests finish first", model_id)
        for model_id, (directory, seen) in found.items():
            if model_id not in self.registry.models and seen is not None:
                await self._consider(model_id, directory, seen)
        for table in (self._pending, self._failed):
            for model_id in set(table) - set(found):
                del table[model_id]

    async def _consider(self, model_id: str, directory: Path, seen: Fingerprint) -> None:
        """Load a new directory once it has stopped changing and has not already failed as it is."""
        if model_id in self._failed and self._failed[model_id] == seen:
            return
        if self._pending.get(model_id) != seen:
            self._pending[model_id] = seen  # new, or still being written: look again next poll
            return
        del self._pending[model_id]
        registry = self.registry
        try:
            served = await asyncio.to_thread(
                load_model, directory, registry.device, registry.dtype, registry.settings, registry.metrics
            )
        except Exception as exc:  # a CheckpointError names the file; anything else comes with its traceback
            self._failed[model_id] = seen
            logger.error(
                "cannot load model %s: %s (tried again when its files change)",
                model_id,
                exc,
                exc_info=not isinstance(exc, CheckpointError),
            )
            return
        self._failed.pop(model_id, None)
        served.engine.start()  # here, not in the thread: a poll cancelled at shutdown leaves no engine running
        registry.add(served)
        logger.info("loaded model %s from %s on %s in %s", model_id, directory, registry.device, served.dtype)

    async def _close_idle_retired(self) -> None:
        retired = self.registry.idle_retired()
        if retired:
            await asyncio.to_thread(self.registry.close_retired, retired)
            for served in retired:
                logger.info("closed the engine of unloaded model %s", served.id)
