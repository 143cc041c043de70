"""Session state made on a CUDA device continues on the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from app.sessions.codec import SessionRecord, decode_session, encode_session

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_cuda_state_decodes_on_the_cpu_with_its_dtype_and_shape(cell: str, dtype: torch.dtype) -> None:
    h = torch.randn(2, 1, 7, device="cuda", dtype=dtype)
    state = (h, torch.randn(2, 1, 7, device="cuda", dtype=dtype)) if cell == "lstm" else h
    record = SessionRecord.from_state(
        state,
        model="m",
        pending_id=1,
        token_count=3,
        ttl=60.0,
        created_at=1.0,
        updated_at=2.0,
        pending_text="",
        history=(),
    )
    back = decode_session(encode_session(record))
    got = back.model_state("cpu")
    pairs = zip(got if isinstance(got, tuple) else (got,), state if isinstance(state, tuple) else (state,), strict=True)
    for decoded, original in pairs:
        assert decoded.device.type == "cpu"
        assert decoded.dtype == dtype and decoded.shape == original.shape
        assert torch.equal(decoded, original.cpu())
