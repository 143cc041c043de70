"""Whether a device computes in bfloat16 natively: the one decision behind `--precision auto`
(training) and `RNNLM_DTYPE=auto` (serving)."""

from __future__ import annotations

import platform

import torch

X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def bf16_supported(device: torch.device | str) -> bool:
    """True on a CUDA GPU with bf16 arithmetic (Ampere and later) and on a CPU whose torch build
    runs bf16 matmuls in hardware (AVX512-BF16 or AMX on x86, the BF16 extension on Arm);
    False elsewhere, where bf16 would be emulated and no faster than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return _cpu_has_bf16_matmuls()
    return False


def _cpu_has_bf16_matmuls() -> bool:
    mkldnn = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]  # unannotated in torch
    if not mkldnn or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if platform.machine().lower() in X86_MACHINES:
        # oneDNN's own check passes on any AVX-512 CPU (Skylake-X too), where bf16 is converted to
        # float32 for every multiply: no faster. The dot-product instructions are what pay.
        avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return bool(avx512_bf16() or amx())
    return True  # aarch64: oneDNN's check is the BF16 extension itself
