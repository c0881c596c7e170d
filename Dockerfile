# One image for the three CityNeuron services (ingest, api, sim) and `db init`.
# Not exercised on the project's machines (no Docker engine there): kept correct by reading.
FROM python:3.11.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cityneuron ./cityneuron
COPY simulator ./simulator
COPY ingest ./ingest
COPY api ./api
COPY broker ./broker
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# uid 10001 is fixed: compose's `provision` service hands the broker secrets to this user.
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home cityneuron \
    && chmod 0755 /usr/local/bin/docker-entrypoint.sh
USER cityneuron
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["--help"]
