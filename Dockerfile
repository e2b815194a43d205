# The `pm` image: one image for the PM, every step consumer, the sample services and the CLI.
#   docker compose build        (docker-compose.yml uses it for every `pm ...` service)
#   docker run --rm pm:local --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PM_STATE_DIR=/data/state \
    PM_SCHEMA_DIR=/app/schemas

WORKDIR /app
COPY . /app

# Editable install: topics.yaml, schemas/ and the sample data stay where the code looks for them
# (beside the package), exactly as in a checkout. The otlp extra lets OTEL_EXPORTER_OTLP_ENDPOINT
# send traces to the collector. confluent-kafka and rocksdict ship manylinux wheels: no compiler.
RUN pip install -e '.[otlp]' \
    && useradd --create-home --uid 1000 pm \
    && mkdir -p /data/state /data/maildir \
    && chown -R pm:pm /data

USER pm
VOLUME ["/data/state"]
ENTRYPOINT ["pm"]
CMD ["--help"]
