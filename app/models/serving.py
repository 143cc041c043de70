"""The loaded models and their own tokenisation."""

from __future__ import annotations

from app.api.limits import check_count, check_text
from app.errors import InvalidRequest
from app.models.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    Token,
    TokenizeRequest,
    TokenizeResponse,
)
from app.models.registry import ModelRegistry, ServedModel
from app.settings import Settings
from model.tokenizer import Encoding


def model_card(served: ServedModel, default: bool, models: ModelRegistry | None = None) -> ModelCard:
    config = served.checkpoint.config
    pairs = models.pairs if models is not None else None
    return ModelCard(
        id=served.id,
        default=default,
        level=served.level,
        cell=config.cell,
        num_layers=config.num_layers,
        embedding_size=config.embedding_size,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        tie_weights=config.tie_weights,
        parameters=served.parameters,
        device=str(served.engine.device),
        dtype=served.dtype,
        training=served.checkpoint.training,
        direction="backward" if served.checkpoint.direction == "backward" else "forward",
        fill_partner=pairs.partner(served.id) if pairs else None,
        fill_partner_refused=pairs.refused.get(served.id) if pairs else None,
    )


def list_models(models: ModelRegistry) -> ModelList:
    return ModelList(data=[model_card(s, s.id == models.default_id, models) for _, s in sorted(models.models.items())])


def get_model(models: ModelRegistry, model_id: str) -> ModelCard:
    """One model's card, as in the list; NotFound names the model."""
    served = models.get(model_id)
    return model_card(served, served.id == models.default_id, models)


def encode(models: ModelRegistry, settings: Settings, model_id: str | None, text: str) -> tuple[ServedModel, Encoding]:
    """The model's own tokenisation of `text`, within max_text_chars."""
    served = models.get(model_id)
    check_text(settings, text, "text")
    return served, served.checkpoint.tokenizer.encode(text)


def decode(models: ModelRegistry, settings: Settings, model_id: str | None, ids: list[int]) -> tuple[ServedModel, str]:
    """The text of `ids`; every id must be in the model's vocabulary."""
    served = models.get(model_id)
    tokenizer = served.checkpoint.tokenizer
    check_count(len(ids), settings.max_text_chars, "ids", "max_text_chars")
    bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise InvalidRequest(
            f"token id {bad[0]} is outside the vocabulary of {served.id!r} (0..{tokenizer.vocab_size - 1})"
        )
    return served, tokenizer.decode(ids)


def tokenize(models: ModelRegistry, settings: Settings, request: TokenizeRequest) -> TokenizeResponse:
    served, encoding = encode(models, settings, request.model, request.text)
    tokens = [
        Token(id=i, token=t, unknown=u) for i, t, u in zip(encoding.ids, encoding.tokens, encoding.unknown, strict=True)
    ]
    return TokenizeResponse(model=served.id, count=len(tokens), tokens=tokens)


def detokenize(models: ModelRegistry, settings: Settings, request: DetokenizeRequest) -> DetokenizeResponse:
    served, text = decode(models, settings, request.model, request.ids)
    return DetokenizeResponse(model=served.id, text=text)
