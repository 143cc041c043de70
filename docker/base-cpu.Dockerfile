# The CPU base of the API and trainer images: Debian's Python 3 with the CPU build of
# torch in /opt/venv (on PATH). The GPU images use the CUDA PyTorch image instead, which
# has both already (docker/api.Dockerfile's default BASE).
#
#   docker build -f docker/base-cpu.Dockerfile -t rnnlm-base-cpu .        # anywhere with a registry
#   make image                                                            # these machines: from a local Debian base
#
# DEBIAN names the Debian image (bookworm: Python 3.11); TORCH is what pip installs for
# torch (the CPU wheels from PyTorch's index by default; `make image` passes the wheel
# file mounted at /wheels instead, so nothing is downloaded).
ARG DEBIAN=debian:bookworm-slim
FROM ${DEBIAN}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# Build-time only (never stored in the image): PIP_CERT names a CA bundle mounted into
# the build where outbound TLS is re-signed; unset, pip uses its own.
ARG PIP_CERT
ARG TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
RUN pip install $TORCH && python -c "import torch; print('torch', torch.__version__)"
