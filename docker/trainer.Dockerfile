# The training image: `rnnlm-train` as the entry point; corpora read-only at /data,
# checkpoints written under /models. One GPU by default; several with torchrun
# (README, "Scaling out"); on CPU `--device cpu` (gloo under torchrun).
#
# BASE as in docker/api.Dockerfile: the CUDA PyTorch image by default,
#   docker build --build-arg BASE=rnnlm-base-cpu -f docker/trainer.Dockerfile -t rnnlm-trainer .
# for the CPU base; `make image` on these machines.
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

# Everything up to the user is the same as in docker/api.Dockerfile, so the two images
# share those layers.

WORKDIR /srv/rnnlm
COPY --from=requirements /requirements/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt "setuptools>=77" && rm /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
COPY training ./training
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info

# A user of its own (uid 10001): the mounted models directory must be writable by it
# (`chown 10001 models`, or `--user` with the owner's uid).
RUN useradd --system --uid 10001 --home-dir /srv/rnnlm --shell /usr/sbin/nologin rnnlm \
    && mkdir /srv/work && chown 10001 /srv/work
USER 10001
# Relative paths land in a directory the user can write: the download and token-file cache
# (.data-cache/, encoded once per corpus) and runs/RECIPE. Mount a volume here to keep the
# token files between runs.
WORKDIR /srv/work
ENV RNNLM_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib

VOLUME ["/models"]
ENTRYPOINT ["rnnlm-train"]
CMD ["char-shakespeare", "--out", "/models/char-shakespeare", "--device", "cuda"]
