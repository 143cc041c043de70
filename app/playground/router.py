"""GET /: the playground page (plain HTML/JS/CSS from app/playground/static, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Three fixed routes rather than a static mount: nothing else under app/ is reachable.
router = APIRouter(tags=["playground"], include_in_schema=False)


@router.get("/")
def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/static/playground.js")
def playground_script() -> FileResponse:
    return FileResponse(STATIC_DIR / "playground.js", media_type="text/javascript")


@router.get("/static/playground.css")
def playground_style() -> FileResponse:
    return FileResponse(STATIC_DIR / "playground.css", media_type="text/css")
