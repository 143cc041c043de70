"""The app factory and the lifespan that owns the models and their engines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI

from app.chat import router as chat
from app.completions import router as completions
from app.fill import router as fill
from app.generate import router as generate
from app.http.errors import ERROR_RESPONSES, install_error_handlers
from app.http.middleware import RequestGuardMiddleware
from app.http.security import ApiKeys, authenticate
from app.metrics import Metrics, MetricsMiddleware
from app.models import router as models
from app.models.registry import load_models
from app.models.watcher import ModelWatcher
from app.playground import router as playground
from app.score import router as score
from app.sessions import router as sessions
from app.sessions.serving import open_sessions
from app.settings import Settings
from app.system import router as system
from app.tokenize import router as tokenizer


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load every checkpoint and start its engine, watch the models dir, open the session store; close all on shutdown."""
    settings: Settings = app.state.settings
    threads = torch.get_num_threads()
    if settings.torch_threads:  # process-wide; restored on shutdown
        torch.set_num_threads(settings.torch_threads)
    registry = app.state.preloaded_models or await asyncio.to_thread(load_models, settings, app.state.metrics)
    app.state.preloaded_models = None
    registry.start()
    app.state.models = registry
    watching = None
    if settings.models_poll_seconds > 0:  # models added to or removed from the directory while serving
        watching = asyncio.create_task(ModelWatcher(registry).run(settings.models_poll_seconds))
    try:
        async with open_sessions(settings, registry) as sessions:
            app.state.sessions = sessions
            yield
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        app.state.sessions = None
        app.state.models = None
        await asyncio.to_thread(registry.close)
        torch.set_num_threads(threads)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; nothing is loaded or connected until the lifespan runs."""
    settings = settings or Settings()
    app = FastAPI(title="rnnlm-service", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.models = None
    app.state.preloaded_models = None  # set by `rnnlm-serve`, which loads before it binds the port
    app.state.sessions = None
    app.state.api_keys = ApiKeys.parse(settings.api_keys.get_secret_value() if settings.api_keys else None)
    install_error_handlers(app)
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for module in (models, tokenizer, generate, score, fill, completions, sessions):  # the API: a key when keys are set
        app.include_router(module.router, dependencies=[Depends(authenticate)], responses=ERROR_RESPONSES)
    app.include_router(completions.invocations_router, dependencies=[Depends(authenticate)], responses=ERROR_RESPONSES)
    # /health, /ready and the page stay open; /info and /metrics check keys; the chat refusal tells nothing.
    for module in (system, playground, chat):
        app.include_router(module.router)
    return app
