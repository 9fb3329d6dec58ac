# threadkeeper: the web chat, the admin page, /healthz, /readyz and /metrics on one port.
#   docker build -t threadkeeper .
#   docker run -p 7860:7860 -v threadkeeper-data:/data threadkeeper
# Two stages: the first builds the wheels, the second installs them on a slim
# Python without a compiler, as a user that is not root. The image holds the
# PostgreSQL engine too (the `postgres` extra: psycopg's binary wheel brings its
# own libpq), so the same image runs on SQLite here or on PostgreSQL in
# compose.yaml (THREADKEEPER_DATABASE_URL=postgresql://...).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY checkpointers ./checkpointers
COPY graph ./graph
COPY ui ./ui
RUN python -m venv /opt/threadkeeper \
    && /opt/threadkeeper/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/threadkeeper/bin/pip install --no-cache-dir '.[postgres]'

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 threadkeeper \
    && mkdir /data && chown threadkeeper:threadkeeper /data
COPY --from=build /opt/threadkeeper /opt/threadkeeper
ENV PATH=/opt/threadkeeper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    THREADKEEPER_DATABASE_URL=sqlite:////data/threadkeeper.db \
    THREADKEEPER_HOST=0.0.0.0 \
    THREADKEEPER_PORT=7860 \
    THREADKEEPER_LOG_FORMAT=json
USER threadkeeper
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('THREADKEEPER_PORT', '7860'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["threadkeeper", "serve"]
