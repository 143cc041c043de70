# The training image: CUDA PyTorch base with `rnnlm-train` as the entry point; single GPU by
# default, `torchrun` for several (see README, "Scaling out").
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t rnnlm-trainer .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RNNLM_DATA_DIR=/data

WORKDIR /srv/rnnlm
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
COPY training ./training
RUN pip install .

# Corpora are mounted read-only at /data, checkpoints are written under /models.
VOLUME ["/models"]
ENTRYPOINT ["rnnlm-train"]
CMD ["char-shakespeare", "--out", "/models/char-shakespeare", "--device", "cuda"]
