# EX-AI MCP Server image: a wheel built in one stage, installed with pinned dependencies into a slim runtime.
#
#   docker build -t exai-mcp-server .
#   docker build --build-arg BASE_IMAGE=python:3.12-slim --build-arg EXTRA_CA_CERTS="$(cat corp-ca.pem)" .
#
# BASE_IMAGE: any Debian-based image with python3 (3.11+), python3-venv and apt-get.
# EXTRA_CA_CERTS: PEM certificates to trust, for builds and calls behind a TLS-intercepting proxy.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG EXTRA_CA_CERTS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
SHELL ["/bin/sh", "-eu", "-c"]
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/extra.crt && update-ca-certificates; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/requirements.lock deploy/requirements.lock
COPY src ./src
# The wheel first, then the pinned dependencies (every file checked against its hash in the lock) and the wheel
# into a virtualenv the runtime stage copies.
RUN python3 -m venv /opt/exai \
    && /opt/exai/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/exai/bin/pip install --no-deps --require-hashes -r deploy/requirements.lock \
    && /opt/exai/bin/pip install --no-deps /wheels/*.whl \
    && /opt/exai/bin/pip check

FROM ${BASE_IMAGE} AS runtime
ARG EXTRA_CA_CERTS=""
SHELL ["/bin/sh", "-eu", "-c"]
# tini is PID 1: it passes SIGTERM on to `exai serve` (graceful shutdown, exit 0) and reaps child processes.
# git serves the precommit tool.
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/extra.crt && update-ca-certificates; \
    fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends tini git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home exai \
    && mkdir -p /data && chown exai:exai /data
COPY --from=build /opt/exai /opt/exai
ENV PATH=/opt/exai/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EXAI_HOST=0.0.0.0 \
    EXAI_PORT=8765 \
    EXAI_DATA_DIR=/data \
    EXAI_LOG_JSON=true
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8765
# Ready means the store answers and a provider is configured (/readyz), not just that the process is up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('EXAI_PORT', '8765'), timeout=4)"]
ENTRYPOINT ["tini", "--", "exai"]
CMD ["serve"]
