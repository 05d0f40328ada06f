# CPU roles: bot, web, io worker, beat, migrate. Small image, CPU torch (face checks run here).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# torch first and pinned. The CPU roles never run the diffusion engine: pass the CPU wheel
# index as TORCH_INDEX_URL for a much smaller image.
ARG TORCH_INDEX_URL=""
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY db ./db
COPY facechain ./facechain
COPY migrations ./migrations
COPY service ./service
COPY tasks ./tasks
COPY alembic.ini NOTICE ./
RUN pip install -e .
RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data
USER app
VOLUME ["/data"]
ENTRYPOINT ["facechain-bot"]
CMD ["run"]
