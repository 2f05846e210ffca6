# One image for both roles of the service:
#   api:    uvicorn api.main:create_app --factory --host 0.0.0.0 --port 8000   (the default CMD)
#   worker: celery -A worker.celery_app worker ...                              (see docker-compose.yml)
# The torch wheel from PyPI bundles the CUDA runtime, so the worker only needs the NVIDIA driver and
# container toolkit on the host; the api never touches the GPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch backs CPU tensors of 2 MiB and more with transparent huge pages (read once, when torch
# starts): a CPU stage allocates and frees its activations every batch, and each 4 KiB page of a
# fresh block faults in again. Measured on a ResNet-18 fine-tune: page faults 20x fewer, CPU time
# 17 % less, the same weights bit for bit (README, Measured). The api never imports torch.
ENV THP_MEM_ALLOC_ENABLE=1

WORKDIR /app

# Optional extras of pyproject.toml to install as well, comma-separated, e.g. MLflow export:
#   docker build --build-arg EXTRAS=mlflow .
ARG EXTRAS=""
# Dependencies first, read from pyproject.toml alone: editing the code then reuses this layer
# instead of reinstalling torch.
COPY pyproject.toml scripts/image_requirements.py ./
RUN python image_requirements.py "${EXTRAS}" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt image_requirements.py

# The source (alembic.ini and migrations/ included: the api runs `alembic upgrade head` from /app).
COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 rift \
    && mkdir -p /app/var \
    && chown rift:rift /app/var

# The commit written into every job's manifest.json (.git is not in the image):
#   docker build --build-arg BUILD_COMMIT=$(git rev-parse HEAD) .
ARG BUILD_COMMIT=""
ENV BUILD_COMMIT=${BUILD_COMMIT}

USER rift
EXPOSE 8000
# API_WORKERS uvicorn processes (see persistence/settings.py); a shell expands the variable.
ENV API_WORKERS=2
# One validator server (one torch import, one VALIDATION_MAX_CONCURRENCY bound) for all of them,
# in a folder only the rift user can reach.
ENV VALIDATION_SOCKET=/app/var/validator/validator.sock
# api.http_protocol: uvicorn's parser answering what it refuses itself (a request head past
# REQUEST_HEAD_MAX_BYTES, an unparsable request) in the API's JSON, not plain text.
ENV REQUEST_HEAD_MAX_BYTES=65536
# api.preflight first: invalid settings or an unmigrated database stop the container once, with one
# line, instead of uvicorn restarting each worker process for ever. No uvicorn access log: the API
# logs one JSON `request` line per request itself, with its request id (the same words as
# compose's api command after its migration; tests/test_deployment_files.py holds them alike).
# PROMETHEUS_MULTIPROC_DIR: the uvicorn processes' metric files, summed by each scrape of
# /metrics (api/multiprocess_metrics.py), in RAM; preflight empties it. Set here, not as an ENV:
# the workers run this image too, and the variable switches every process's prometheus_client.
CMD ["sh", "-c", "export PROMETHEUS_MULTIPROC_DIR=\"${PROMETHEUS_MULTIPROC_DIR:-/dev/shm/rift-api-metrics}\" && python -m api.preflight && exec uvicorn api.main:create_app --factory --host 0.0.0.0 --port 8000 --http api.http_protocol:HttpToolsProtocol --h11-max-incomplete-event-size \"${REQUEST_HEAD_MAX_BYTES}\" --workers \"${API_WORKERS}\" --no-access-log"]
