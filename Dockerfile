# two-tower-recall: one image for `recall train`, `recall build-index` and `recall serve`.
# Build: docker build -t two-tower-recall .   Run: see docker-compose.yml.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE

WORKDIR /app

# CPU-only torch first, from its own index, so the project install does not pull CUDA wheels.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY models ./models
COPY index_builder ./index_builder
COPY service ./service
COPY recall ./recall
COPY configs ./configs
# The project and its extra are pinned in pyproject.toml; TorchRec asks for the CUDA fbgemm-gpu,
# so it and the CPU FBGEMM go in without dependencies.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[distributed]' \
    && pip install --no-cache-dir --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 \
    && groupadd --gid 10001 recall \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin recall \
    && mkdir -p /app/data /app/artifacts /app/snapshots \
    && chown recall:recall /app/data /app/artifacts /app/snapshots

USER 10001:10001

# One uvicorn worker per container; scale with replicas, not workers.
ENV RECALL_HOST=0.0.0.0 \
    RECALL_PORT=8000 \
    RECALL_SNAPSHOTS=/app/snapshots
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RECALL_PORT', '8000'), timeout=2)"]

CMD ["recall", "serve"]
