# syntax=docker/dockerfile:1
# CPU roles: bot, web, worker-io, beat, migrate. One image, the role is the command.
#
# torch is the CPU build from the PyTorch CPU wheel index (about a tenth of the CUDA build):
# the web process validates uploaded style LoRAs against SD1.5's module shapes, built on the
# meta device by diffusers. The io workers and beat run from this image too but never import
# torch, diffusers or transformers (tasks are registered per queue), so they stay small in
# memory. No CUDA libraries, no compilers, no apt packages: every dependency is a wheel.
#
# The base is pinned by tag and digest (python 3.11.14, Debian 12). The digest was taken from
# public pins of the same tag, not read from the registry here; re-pin with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
# and pass --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- dependencies: a venv built from pyproject.toml alone, cached until it changes ----------
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /build
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python -m venv /opt/venv \
    && python requirements.py --torch > torch.txt \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -r torch.txt \
    && python requirements.py s3 > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

# --- runtime: the venv, the source, a non-root user ------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 DATA_DIR=/data ENGINE_MODELS_DIR=/models
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && install -d -o app -g app /data /models
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# What is copied is decided by .dockerignore (tests, docs, bench and local state stay out).
COPY . .
# Editable: migrations and alembic.ini are found next to the code. Byte-compiled once here,
# since the app user cannot write into /app; the import is a smoke test of the whole image.
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m compileall -q /app \
    && python -c "import cv2, celery, telegram, sqlalchemy, psycopg, torch; import service.cli"
USER 10001:10001
VOLUME ["/data", "/models"]
# Health is per role: docker-compose.yml gives each service its `facechain-bot health` check.
ENTRYPOINT ["facechain-bot"]
CMD ["--help"]
