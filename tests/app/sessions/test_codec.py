"""Session records to bytes and back: exact tensors, no pickle, clear errors on bad bytes."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from app.sessions.codec import MAGIC, SessionCodecError, SessionRecord, decode_session, encode_session


def make_record(cell: str = "lstm", dtype: torch.dtype = torch.float32) -> SessionRecord:
    h = torch.randn(2, 1, 7).to(dtype)
    state = (h, torch.randn(2, 1, 7).to(dtype)) if cell == "lstm" else h
    return SessionRecord.from_state(
        state,
        model="tiny-char",
        pending_id=5,
        token_count=42,
        ttl=600.0,
        created_at=1_700_000_000.25,
        updated_at=1_700_000_100.5,
        pending_text="다람",
        history=(1, 2, 3),
    )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_exact(cell: str, dtype: torch.dtype) -> None:
    record = make_record(cell, dtype)
    data = encode_session(record)
    assert data.startswith(MAGIC)
    assert b"pickle" not in data and b"torch._utils" not in data
    back = decode_session(data)
    assert back.model == record.model and back.pending_text == "다람"
    assert (back.pending_id, back.token_count, back.history) == (5, 42, (1, 2, 3))
    assert (back.ttl, back.created_at, back.updated_at) == (600.0, 1_700_000_000.25, 1_700_000_100.5)
    assert len(back.state) == len(record.state)
    for got, want in zip(back.state, record.state, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


def test_model_state_has_the_models_shape() -> None:
    lstm = make_record("lstm").model_state()
    assert isinstance(lstm, tuple) and lstm[0].shape == (2, 1, 7)
    gru = make_record("gru").model_state()
    assert isinstance(gru, torch.Tensor) and gru.shape == (2, 1, 7)
    half = make_record("lstm", torch.float16).model_state(dtype=torch.float32)  # a replica of another dtype
    assert isinstance(half, tuple) and half[0].dtype == torch.float32


def test_state_bytes_are_the_raw_tensor_bytes() -> None:
    record = make_record("lstm")
    data = encode_session(record)
    raw = b"".join(t.numpy().tobytes() for t in record.state)
    assert data.endswith(raw)
    assert len(raw) == 2 * 2 * 7 * 4


def with_header(data: bytes, **changes: object) -> bytes:
    _, _, length = struct.unpack_from("<4sBI", data)
    header = json.loads(data[9 : 9 + length])
    header.update(changes)
    new = json.dumps(header).encode()
    return struct.pack("<4sBI", MAGIC, 1, len(new)) + new + data[9 + length :]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:5], "shorter than"),
        (lambda d: b"XXXX" + d[4:], "does not start"),
        (lambda d: d[:4] + b"\x09" + d[5:], "format version 9"),
        (lambda d: d[:-3], "tensor data ends"),
        (lambda d: d + b"\x00", "unexpected bytes"),
        (lambda d: with_header(d, tensors=[{"dtype": "int64", "shape": [2, 1, 7]}]), "no known dtype"),
        (lambda d: with_header(d, tensors=[{"dtype": "float32", "shape": [2, 7]}]), "not \\(layers, 1, hidden\\)"),
        (lambda d: with_header(d, model=3), "'model'"),
        (lambda d: with_header(d, history=["a"]), "history"),
        (lambda d: d[:9] + b"\xff" + d[10:], "not UTF-8 JSON"),
    ],
)
def test_bad_bytes_raise_a_clear_error(mangle: object, message: str) -> None:
    data = encode_session(make_record("lstm"))
    with pytest.raises(SessionCodecError, match=message):
        decode_session(mangle(data))  # type: ignore[operator]
