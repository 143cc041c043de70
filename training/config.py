"""The training configuration: one typed dataclass, read from a recipe (TOML) plus overrides.

Every field carries its help text; the command line (`--field-name` and `--set
field_name=value`) is generated from the dataclass, so a new field is a new flag.
"""

from __future__ import annotations

import sys
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from model.network import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES_DIR = "recipes"  # package data of `training`


class ConfigError(ValueError):
    """A recipe, flag or `--set` value that cannot be used; the message names it."""


def _help(text: str, default: Any = MISSING) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in the checkpoint's config.json and the resume state."""

    # data
    data: str = _help("registry dataset (tinyshakespeare, ptb, wikitext-2, nsmc) or a text file/directory", "ptb")
    level: Literal["char", "word", "subword"] = _help(
        "tokenization: characters, words (<eos> per line) or byte-level BPE subwords (max_vocab of them)", "word"
    )
    pretokenizer: Literal["whitespace", "punctuation"] = _help(
        "how the word level cuts a line: at whitespace (PTB, WikiText-2), or punctuation and symbols apart too "
        "with the spacing kept in the tokens (raw text)",
        "whitespace",
    )
    lowercase: bool = _help("lower-case word tokens", False)
    max_vocab: int = _help("vocabulary size cap, specials included (0 = no cap)", 0)
    min_freq: int = _help("drop train tokens seen fewer times than this", 1)
    split: str = _help("train/valid/test percentages by lines, for a text without splits", "90/5/5")
    eval_lines: int = _help(
        "score only the first N lines of valid and test (0 = all): comparisons within a short budget", 0
    )
    bpe_sample_mb: float = _help(
        "the subword level learns its merges from the whole train split up to this many MB, else from an evenly "
        "spread sample of this size (0 = always the whole split)",
        16.0,
    )
    direction: Literal["forward", "backward"] = _help("backward trains on the reversed token stream", "forward")
    data_dir: str = _help("local copy of the registry corpora, looked up first (RNNLM_DATA_DIR)", "")
    cache_dir: str = _help(
        "where registry corpora are downloaded on first use, and every corpus's token files are kept (tokens/)",
        ".data-cache",
    )
    # model
    cell: Literal["rnn_tanh", "lstm", "gru"] = _help("recurrent cell", "lstm")
    embedding_size: int = _help("embedding width", 200)
    hidden_size: int = _help("hidden units per layer", 200)
    num_layers: int = _help("stacked recurrent layers", 2)
    dropout: float = _help("dropout on embeddings, between layers and before the decoder", 0.2)
    tie_weights: bool = _help("share the embedding and decoder weights (Press & Wolf 2017)", False)
    init_range: float = _help("uniform init range of embedding and decoder", 0.1)
    variational_dropout: bool = _help(
        "dropout masks locked over time, also between layers (Gal & Ghahramani 2016; AWD-LSTM)", False
    )
    embedding_dropout: float = _help("drop whole words from the embedding matrix (AWD-LSTM)", 0.0)
    weight_drop: float = _help("DropConnect on the hidden-to-hidden weights, fused kernel kept (AWD-LSTM)", 0.0)
    # optimisation
    batch_size: int = _help("parallel token streams B (split across DDP ranks)", 20)
    bptt: int = _help("truncated BPTT window length in tokens", 35)
    eval_batch_size: int = _help("parallel streams when evaluating", 10)
    optimizer: Literal["sgd", "adamw"] = _help("optimizer", "sgd")
    lr: float = _help("peak learning rate", 20.0)
    momentum: float = _help("SGD momentum", 0.0)
    weight_decay: float = _help("decoupled weight decay (AdamW) or L2 (SGD)", 0.0)
    clip: float = _help("global gradient-norm clip (0 = off)", 0.25)
    schedule: Literal["plateau", "cosine", "constant"] = _help(
        "plateau: divide lr by lr_decay when validation stops improving; cosine: anneal to min_lr over epochs",
        "plateau",
    )
    lr_decay: float = _help("plateau divisor of the learning rate", 4.0)
    min_lr: float = _help("floor of the learning rate", 0.0)
    warmup_steps: int = _help("linear warm-up steps (cosine)", 0)
    epochs: int = _help("passes over the training split", 40)
    max_steps: int = _help("stop after this many optimizer steps (0 = no limit); a resume point, not the horizon", 0)
    max_minutes: float = _help(
        "wall-clock budget in minutes, closing validation and test included (0 = none); cosine then follows the clock",
        0.0,
    )
    budget_clock: Literal["wall", "cpu"] = _help(
        "what max_minutes counts: wall-clock time, or this process's CPU time (the same work on a shared machine)",
        "wall",
    )
    eval_every: int = _help("also validate every N steps (0 = once per epoch)", 0)
    patience: int = _help("early stopping: validations without improvement before stopping (0 = never)", 0)
    seed: int = _help("random seed (data order is fixed; this seeds init and dropout)", 1111)
    # runtime
    device: str = _help("cpu or cuda", "cpu")
    precision: Literal["auto", "fp32", "bf16"] = _help(
        "bf16: matmuls under bf16 autocast, float32 master weights, state and loss; auto: bf16 where the device "
        "computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32",
        "auto",
    )
    threads: int = _help("CPU threads for torch (0 = all cores)", 0)
    log_every: int = _help("steps between progress updates and metrics lines", 50)
    progress: bool = _help("show a progress bar", True)
    out: str = _help("output checkpoint directory (default: runs/RECIPE)", "")
    recipe: str = _help("recipe this config came from (informational)", "")
    expected: str = _help("the result this recipe is expected to reach (informational)", "")

    def __post_init__(self) -> None:
        if not self.out:
            self.out = str(Path("runs") / (self.recipe or "model"))
        self.validate()

    def validate(self) -> None:
        for name, hint in field_types().items():
            value = getattr(self, name)
            if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
                choices = ", ".join(map(str, typing.get_args(hint)))
                raise ConfigError(f"{name} must be one of {choices}, not {value!r}")
        positive = ("embedding_size", "hidden_size", "num_layers", "batch_size", "bptt", "eval_batch_size", "epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in (
            "max_vocab",
            "eval_lines",
            "max_steps",
            "eval_every",
            "patience",
            "warmup_steps",
            "threads",
            "min_freq",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.lr <= 0:
            raise ConfigError("lr must be > 0")
        if self.bpe_sample_mb < 0:
            raise ConfigError("bpe_sample_mb must be >= 0")
        if self.max_minutes < 0 or self.clip < 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ConfigError("max_minutes, clip, min_lr and weight_decay must be >= 0")
        if self.schedule == "plateau" and self.lr_decay <= 1.0:
            raise ConfigError("lr_decay must be > 1 (the plateau schedule divides the learning rate by it)")
        if self.level == "subword" and not self.max_vocab:
            raise ConfigError("the subword level needs --max-vocab N, the size of the subword vocabulary")
        if self.log_every < 1:
            raise ConfigError("log_every must be at least 1")
        parse_split(self.split)
        try:
            self.model_config(vocab_size=1)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            cell=self.cell,
            embedding_size=self.embedding_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            dropout=self.dropout,
            tie_weights=self.tie_weights,
            init_range=self.init_range,
            variational_dropout=self.variational_dropout,
            embedding_dropout=self.embedding_dropout,
            weight_drop=self.weight_drop,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_types() -> dict[str, Any]:
    """Resolved type of each TrainConfig field (annotations are strings here)."""
    return typing.get_type_hints(TrainConfig)


def field_help() -> dict[str, str]:
    return {f.name: str(f.metadata.get("help", "")) for f in fields(TrainConfig)}


def parse_split(rule: str) -> tuple[float, float, float]:
    """'90/5/5' -> fractions of lines for train, valid, test."""
    parts = rule.split("/")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 3 or any(n < 0 for n in numbers) or numbers[0] <= 0 or abs(sum(numbers) - 100) > 1e-6:
        raise ConfigError(f"split must be three percentages train/valid/test summing to 100, like 90/5/5, not {rule!r}")
    return numbers[0] / 100, numbers[1] / 100, numbers[2] / 100


def convert(name: str, value: Any) -> Any:
    """Check or convert a value (a TOML value or a command-line string) to the field's type."""
    hints = field_types()
    if name not in hints:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"unknown config key {name!r} (known keys: {known})")
    hint = hints[name]
    if typing.get_origin(hint) is Literal:
        hint = type(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # pragma: no cover - no optional fields yet
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        return parse_bool(name, value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return hint(value)
        except ValueError:
            pass
    raise ConfigError(f"{name} must be {hint.__name__}, not {value!r}")


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def build_config(values: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from raw values (every key checked and converted)."""
    converted = {name: convert(name, value) for name, value in upgrade_legacy(values).items()}
    return TrainConfig(**converted)


def upgrade_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """Values saved or written before `precision` existed: `amp` (bf16 autocast on CUDA only)
    becomes the precision it meant, so an old run resumes as it trained."""
    values = dict(values)
    if "amp" in values:
        amp = parse_bool("amp", values.pop("amp"))
        on_cuda = str(values.get("device", "cpu")).startswith("cuda")
        values.setdefault("precision", "bf16" if amp and on_cuda else "fp32")
    return values


def parse_assignment(text: str) -> tuple[str, str]:
    """'key=value' from --set; dashes in the key are accepted for underscores."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, not {text!r}")
    return key.strip().replace("-", "_"), value.strip()


def recipe_names() -> list[str]:
    root = resources.files("training") / RECIPES_DIR
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Raw values of a shipped recipe (by name) or of a TOML file (by path), with `recipe` set."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        name = path.stem
    else:
        resource = resources.files("training") / RECIPES_DIR / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ConfigError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(recipe_names())}")
        text = resource.read_text(encoding="utf-8")
        name = name_or_path
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {name_or_path}: not valid TOML ({exc})") from exc
    # Recipes may group keys in tables ([model], [optim], ...): flatten them.
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    flat.setdefault("recipe", name)
    return flat
