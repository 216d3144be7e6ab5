# sip-router image: dependencies from uv.lock in their own layer, slim runtime, non-root.

# ---- build stage: resolve the locked dependencies and install the project into /app/.venv
FROM python:3.11-slim-bookworm AS build

# uv uses the image's Python (never a downloaded one), copies instead of hard-linking,
# compiles bytecode now because the runtime filesystem is read-only, and keeps no cache.
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies change less often than the code: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv sync --frozen --no-dev --no-install-project

# The project itself, installed as a regular (non-editable) package so the runtime stage
# needs only the virtual environment.
COPY README.md ./
COPY app ./app
RUN uv sync --frozen --no-dev --no-editable

# ---- runtime stage: the virtual environment and the rules, nothing else
FROM python:3.11-slim-bookworm

RUN groupadd --system --gid 10001 sip-router \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sip-router

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/app/.venv \
    PATH="/app/.venv/bin:${PATH}" \
    SIP_ROUTER_RULES=/app/routing_rules/rules.yaml

WORKDIR /app

# Owned by root and read-only for the service user: the process never writes here.
COPY --from=build /app/.venv /app/.venv
# Default rules; mount a directory over /app/routing_rules to replace them.
COPY routing_rules /app/routing_rules

USER 10001:10001

EXPOSE 8000

# Liveness: /healthz answers while the process serves HTTP. A Redis that does not answer
# shows on /readyz (503 with the reason) and as warnings in the log, not here: a runtime that
# replaces unhealthy containers (Swarm, autoheal) would otherwise restart every replica
# during a Redis outage without curing it. deploy/compose.yaml and the Kubernetes readiness
# probe check /readyz. No curl in the slim image: the check uses the image's own Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status == 200 else 1)"]

CMD ["sip-router", "serve", "--host", "0.0.0.0", "--port", "8000"]
