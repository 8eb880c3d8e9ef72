# Engram's server image: `engram serve` on 0.0.0.0:50051, the SQLite default in /data.
#
#   docker build -t engram:local .
#   docker run --rm -v engram-data:/data engram:local keys create --admin
#   docker run -d --name engram --stop-timeout 15 -v engram-data:/data \
#     -p 127.0.0.1:50051:50051 engram:local
#
# The server refuses to start on a non-loopback address while no API key exists, so create
# an admin key first (above), or run `serve --insecure` knowingly: no authentication at all.
# See README.md, "Run in a container".

# Any Debian-like image with python3 (3.11 or later), its venv module and ca-certificates.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- builder: this checkout as a wheel, installed with the server extra into a venv --------
FROM ${BASE_IMAGE} AS builder

# PEM text of extra CA certificates for pip (behind a TLS-inspecting proxy). Used in this
# stage only; the runtime stage starts again from BASE_IMAGE and copies the venv alone.
ARG EXTRA_CA_CERTS=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# `python3`, not `python`: Debian's python3 has no `python`; the official images have both.
RUN set -eu; \
    python3 -m venv /opt/engram; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" > /tmp/extra-ca.pem; \
      cat /etc/ssl/certs/ca-certificates.crt /tmp/extra-ca.pem > /tmp/pip-ca.pem; \
      printf '[global]\ncert = /tmp/pip-ca.pem\n' > /etc/pip.conf; \
    fi

WORKDIR /src

# The dependencies first, from pyproject.toml alone (an empty package stands in for the
# code), so that a change to the code does not download them again. bpe-openai only ships
# tiktoken's encoding files, copied out below and then uninstalled.
COPY pyproject.toml ./
RUN set -eu; \
    mkdir -p server/engram alembic; \
    touch README.md server/engram/__init__.py; \
    /opt/engram/bin/pip install '.[server]' 'bpe-openai>=0.1.4,<0.2'; \
    /opt/engram/bin/pip uninstall --yes engram; \
    rm -rf build server README.md

COPY README.md alembic.ini ./
COPY alembic ./alembic
COPY server ./server
RUN set -eu; \
    /opt/engram/bin/pip wheel --no-deps --wheel-dir /tmp/wheels .; \
    /opt/engram/bin/pip install --no-deps /tmp/wheels/engram-*.whl; \
    /opt/engram/bin/python -m engram.adapters.tokens.offline /opt/tiktoken; \
    /opt/engram/bin/pip uninstall --yes bpe-openai; \
    /opt/engram/bin/pip check

# --- runtime ------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

RUN set -eu; \
    groupadd --gid 10001 engram; \
    useradd --uid 10001 --gid engram --create-home --home-dir /home/engram \
      --shell /usr/sbin/nologin engram; \
    mkdir -p /data; \
    chown engram:engram /data

COPY --from=builder /opt/engram /opt/engram
COPY --from=builder /opt/tiktoken /opt/tiktoken

# ENGRAM_HOST: every interface of the container; publish the port on the host's loopback
# (`-p 127.0.0.1:50051:50051`) unless clients elsewhere must reach it.
ENV PATH=/opt/engram/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENGRAM_HOST=0.0.0.0 \
    ENGRAM_SQLITE_PATH=/data/engram.db \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken

# The embedded SQLite database and the encryption.key generated beside it (when no
# ENGRAM_ENCRYPTION_KEY is given). Unused on PostgreSQL (ENGRAM_PG_URI or ENGRAM_PG_HOST).
VOLUME ["/data"]
WORKDIR /data
USER engram

EXPOSE 50051

# The server drains on SIGTERM: NOT_SERVING for ENGRAM_DRAIN_DELAY_SECONDS, then
# ENGRAM_SHUTDOWN_GRACE_SECONDS for calls in flight. Give `docker stop -t` more than both.
STOPSIGNAL SIGTERM

# The standard gRPC health service, overall status (""): SERVING once the database is
# reachable and migrated; NOT_SERVING while it is unreachable and while draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2, health_pb2_grpc; channel = grpc.insecure_channel('127.0.0.1:' + os.environ.get('ENGRAM_PORT', '50051')); reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=''), timeout=4); sys.exit(reply.status != health_pb2.HealthCheckResponse.SERVING)"]

ENTRYPOINT ["engram"]
CMD ["serve"]

# Last, so that a new revision rebuilds nothing.
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="engram" \
      org.opencontainers.image.description="A gRPC server for stateful LLM agents with long-term memory." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
