"""Dependency aliases for the routers: the settings, metrics and loaded models of this app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unavailable
from app.metrics import Metrics
from app.models.registry import ModelRegistry
from app.sessions.serving import SessionService
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_models(request: Request) -> ModelRegistry:
    models: ModelRegistry | None = request.app.state.models
    if models is None:
        raise Unavailable("models are not loaded yet")
    return models


def get_sessions(request: Request) -> SessionService:
    sessions: SessionService | None = request.app.state.sessions
    if sessions is None:
        raise Unavailable("the session store is not open yet")
    return sessions


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
SessionsDep = Annotated[SessionService, Depends(get_sessions)]
