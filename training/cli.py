"""`rnnlm-train RECIPE [--data NAME|PATH] [--out DIR] [--max-minutes M] [--resume DIR] [--set k=v ...]`.

The flags are generated from TrainConfig: every field is `--field-name` (help text from
the dataclass) and also a `--set field_name=value` key. Precedence: recipe, then
`--set`, then explicit flags. With `--resume DIR` the saved config of that run is the
starting point instead of the recipe's, and the output directory defaults to DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import torch

from training.config import (
    ConfigError,
    TrainConfig,
    build_config,
    convert,
    field_help,
    field_types,
    load_recipe,
    parse_assignment,
    recipe_names,
)
from training.data import DataError
from training.distributed import DistributedContext
from training.resume import ResumeError, read_resume_config
from training.trainer import TrainingError, train

DATA_DIR_VARIABLE = "RNNLM_DATA_DIR"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnlm-train",
        description="Train a character-, word- or subword-level RNN language model into a checkpoint directory.",
        epilog=f"Shipped recipes: {', '.join(recipe_names())}. "
        f"Registry corpora are looked up first in ${DATA_DIR_VARIABLE}.",
    )
    parser.add_argument("recipe", nargs="?", help="a shipped recipe name or a path to a recipe .toml file")
    parser.add_argument("--resume", metavar="DIR", help="continue the run whose --out directory is DIR")
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE", help="override any config field"
    )
    parser.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    fields = parser.add_argument_group("config fields (each is also a --set key)")
    helps = field_help()
    for name, hint in field_types().items():
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"field_{name}", "default": argparse.SUPPRESS, "help": helps[name]}
        if typing.get_origin(hint) is Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif hint is bool:
            kwargs["metavar"] = "{true,false}"
        else:
            kwargs["metavar"] = name.upper()
        fields.add_argument(flag, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> tuple[TrainConfig, Path | None]:
    """The run's config and the resume directory (if any) from parsed arguments."""
    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        values = read_resume_config(resume)
        values.pop("tokenizer", None)
        values["out"] = str(resume)
    elif args.recipe:
        values = load_recipe(args.recipe)
    else:
        raise ConfigError("name a recipe (or --resume DIR); see --list-recipes")
    if not values.get("data_dir") and environ.get(DATA_DIR_VARIABLE):
        values["data_dir"] = environ[DATA_DIR_VARIABLE]
    for assignment in args.assignments:
        key, value = parse_assignment(assignment)
        values[key] = convert(key, value)
    for key, value in vars(args).items():
        if key.startswith("field_"):
            values[key.removeprefix("field_")] = convert(key.removeprefix("field_"), value)
    return build_config(values), resume


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_recipes:
        for name in recipe_names():
            recipe = load_recipe(name)
            print(f"{name:24s} {recipe.get('expected', '')}")
        return 0
    out = "DIR"
    try:
        config, resume = config_from_args(args, dict(os.environ))
        out = config.out
        context = DistributedContext.from_environment(os.environ)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available")
        if config.device == "cuda" and context.enabled:
            config.device = f"cuda:{context.local_rank}"
            torch.cuda.set_device(context.local_rank)
        # All cores by default, shared fairly between the ranks on this machine.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // local_world))
        result = train(config, context=context, resume_from=resume)
    except (ConfigError, DataError, ResumeError, TrainingError, ValueError) as exc:
        print(f"rnnlm-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nrnnlm-train: interrupted; `rnnlm-train --resume {out}` continues from the last validation",
            file=sys.stderr,
        )
        return 130
    if context.is_main:
        figures = result.figures
        summary = {k: figures.get(k) for k in ("val_ppl", "test_ppl", "val_bpc", "test_bpc", "steps", "epochs")}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if isinstance(v, (int, float)))
        print(f"saved {result.out} ({shown}, {figures['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
