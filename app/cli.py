"""`rnnlm-serve`: run the service with uvicorn; flags override the RNNLM_* settings."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from app.main import create_app
from app.models.registry import ModelsDirError, load_models
from app.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rnnlm-serve", description="Serve RNN language models over HTTP.")
    parser.add_argument("--models", type=Path, help="models directory (RNNLM_MODELS_DIR)")
    parser.add_argument("--host", help="address to bind (RNNLM_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (RNNLM_PORT, default 8000)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"models_dir": args.models, "host": args.host, "port": args.port}
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        print(f"rnnlm-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    # Load the checkpoints before binding the port, so that a bad one stops the start with
    # one line naming the file rather than a traceback from inside the lifespan.
    try:
        app.state.preloaded_models = load_models(settings, app.state.metrics)
    except ModelsDirError as exc:
        print(f"rnnlm-serve: cannot start: {exc}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
