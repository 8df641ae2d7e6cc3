# callscope: ingest, build --follow, dashboard, demo app and simulator all run from this one image.
# docker compose builds it (see docker-compose.yml and docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CALLSCOPE_DATA=/data

WORKDIR /opt/callscope

# Metadata first, sources after: the layer order keeps rebuilds cheap when only code changes.
COPY pyproject.toml README.md ./
COPY callscope ./callscope
COPY collectors ./collectors
COPY pipeline ./pipeline
COPY dashboard ./dashboard
COPY simulator ./simulator
RUN pip install --no-compile '.[dashboard]'

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
