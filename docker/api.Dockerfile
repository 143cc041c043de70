# The serving image: `rnnlm-serve` on port 8000, checkpoints mounted at /models.
#
# BASE names an image that has Python 3.11+ with torch on PATH as `python`/`pip`:
#   the CUDA PyTorch image (the default, for a GPU):
#     docker build -f docker/api.Dockerfile -t rnnlm-api .
#   the CPU base (docker/base-cpu.Dockerfile), anywhere without a GPU:
#     docker build -f docker/base-cpu.Dockerfile -t rnnlm-base-cpu .
#     docker build --build-arg BASE=rnnlm-base-cpu -f docker/api.Dockerfile -t rnnlm-api .
#   these machines (no registry): `make image` builds both from a local Debian base.
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# The dependency list, read from pyproject.toml in a stage of its own: the layer that
# installs it is rebuilt only when the list itself changes, not at every edit of the file.
FROM ${BASE} AS requirements
WORKDIR /requirements
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt

FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build-time only: a CA bundle mounted into the build where outbound TLS is re-signed.
ARG PIP_CERT

WORKDIR /srv/rnnlm
# The dependencies first, in their own layer: a change to the source rebuilds only the
# last layers. torch is in the base and satisfies torch>=2.4, so pip leaves it alone.
COPY --from=requirements /requirements/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt "setuptools>=77" && rm /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
COPY training ./training
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info

# A user of its own: the server needs to write nothing but its temporary files.
RUN useradd --system --uid 10001 --home-dir /srv/rnnlm --shell /usr/sbin/nologin rnnlm
USER 10001

# Checkpoints are mounted here (docker-compose.yml: ./models -> /models, read-only).
VOLUME ["/models"]
EXPOSE 8000
# No curl in the bases: the health check uses Python's own HTTP client. /ready is 503
# until every model is loaded and Redis answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"]
CMD ["rnnlm-serve", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
