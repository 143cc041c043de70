# The serving image: CUDA PyTorch base, the project installed on top, `rnnlm-serve` as the command.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t rnnlm-api .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /srv/rnnlm
# torch is already in the base image (CUDA build) and satisfies torch>=2.4, so pip
# installs only the rest of the dependencies.
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
COPY training ./training
RUN pip install .

# Checkpoints are mounted here (docker-compose.yml: ./models -> /models).
VOLUME ["/models"]
EXPOSE 8000
# No curl in the base image: the health check uses Python's own HTTP client.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"
CMD ["rnnlm-serve", "--models", "/models", "--host", "0.0.0.0", "--port", "8000"]
