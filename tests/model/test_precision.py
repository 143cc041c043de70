import platform
from pathlib import Path

import pytest
import torch

from model.precision import X86_MACHINES, bf16_supported

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@pytest.mark.skipif(
    not CPUINFO.is_file() or platform.machine().lower() not in X86_MACHINES, reason="reads x86 Linux CPU flags"
)
def test_an_x86_cpu_has_bf16_exactly_when_it_has_the_dot_product_instructions() -> None:
    flags = cpu_flags()
    expected = torch.backends.mkldnn.is_available() and bool({"avx512_bf16", "amx_bf16"} & flags)
    assert bf16_supported("cpu") is expected
    assert bf16_supported(torch.device("cpu")) is expected


def test_devices_without_bf16_kernels_say_no() -> None:
    assert bf16_supported("meta") is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_cuda_without_a_gpu_says_no() -> None:
    assert bf16_supported("cuda") is False


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_gpu_has_bf16_from_ampere_on() -> None:
    major, _ = torch.cuda.get_device_capability(0)
    assert bf16_supported("cuda:0") is (major >= 8 or torch.version.hip is not None)
