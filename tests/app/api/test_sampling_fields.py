"""The sampling fields, declared once: every surface converts them alike, and refusals are derived from them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.api.schemas import SAMPLING_FIELDS
from app.engine import Engine
from app.generate.beam import BEAM_HONOURS
from model.sampling import SamplingParams
from tests.helpers import NON_DEFAULT


def test_every_declared_sampling_field_has_a_test_value() -> None:
    """A field added to SamplingFields joins the walks below (and the refusals) through this table."""
    assert set(NON_DEFAULT) == set(SAMPLING_FIELDS)


@pytest.mark.parametrize("name", [name for name in SAMPLING_FIELDS if name not in BEAM_HONOURS])
async def test_beam_search_refuses_every_sampling_field_it_cannot_honour(client: httpx.AsyncClient, name: str) -> None:
    body = {"model": "word", "prompt": "the", "beam_width": 3, name: NON_DEFAULT[name]}
    response = await client.post("/v1/generate", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["conflicts"] == [name]


async def test_beam_search_takes_the_fields_it_honours(client: httpx.AsyncClient) -> None:
    honoured = {name: NON_DEFAULT[name] for name in BEAM_HONOURS}
    response = await client.post("/v1/generate", json={"model": "word", "prompt": "the", "beam_width": 3, **honoured})
    assert response.status_code == 200, response.text
    assert len(response.json()["tokens"]) <= NON_DEFAULT["max_tokens"]


async def test_every_surface_hands_the_engine_the_same_sampling_params(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/v1/generate, session generate and /v1/completions: one conversion, so one SamplingParams."""
    seen: list[SamplingParams] = []
    original = Engine.generate

    def recording(self: Engine, start: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(settings.sampling)
        return original(self, start, settings, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", recording)
    body = {name: NON_DEFAULT[name] for name in SAMPLING_FIELDS if name != "stop"}  # "x" could end it early
    created = await client.post("/v1/sessions", json={"model": "word", "prompt": "the"})
    for path, extra in [
        ("/v1/generate", {"prompt": "the"}),
        (f"/v1/sessions/{created.json()['id']}/generate", {}),
        ("/v1/completions", {"prompt": "the"}),
    ]:
        response = await client.post(path, json={"model": "word", **body, **extra})
        assert response.status_code == 200, (path, response.text)
    expected = SamplingParams(
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        logit_bias=((3, 1.5),),
        allow_unk=True,
    )
    assert seen == [expected] * 3


async def test_allow_unk_is_off_unless_asked(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    original = Engine.generate

    def recording(self: Engine, start: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(settings.sampling.allow_unk)
        return original(self, start, settings, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", recording)
    for path in ("/v1/generate", "/v1/completions"):
        for extra in ({}, {"allow_unk": True}):
            response = await client.post(path, json={"model": "word", "prompt": "the", "max_tokens": 1, **extra})
            assert response.status_code == 200, response.text
    assert seen == [False, True, False, True]
