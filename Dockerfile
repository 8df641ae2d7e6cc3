# callscope: ingest, build --follow, dashboard and the demo all run from this one image.
# docker compose builds it (see docker-compose.yml and docs/deploy.md).

# Stage 1: wheels for callscope (with its C OTLP decoder, pipeline._otlp_fast) and every dependency.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY callscope ./callscope
COPY collectors ./collectors
COPY pipeline ./pipeline
COPY dashboard ./dashboard
COPY simulator ./simulator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[dashboard]'

# Stage 2: the runtime, without a compiler.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CALLSCOPE_DATA=/data
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels 'callscope[dashboard]' \
    && rm -rf /wheels \
    && python -c "import pipeline._otlp_fast; import collectors._media_fast"

# A fixed non-root uid, so that files in the shared data volume have one owner whichever
# service wrote them. /data is created here so that a fresh named volume inherits its owner.
RUN useradd --system --uid 10001 --home-dir /home/callscope --create-home callscope \
    && mkdir -p /data \
    && chown callscope:callscope /data
USER callscope
WORKDIR /home/callscope
VOLUME ["/data"]

# 4318: `callscope ingest` (OTLP/HTTP); 8501: `callscope dashboard`.
EXPOSE 4318 8501

ENTRYPOINT ["callscope"]
CMD ["--help"]
