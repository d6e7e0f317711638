# syntax=docker/dockerfile:1.7
# FileWallBall image: `docker build -t localhost:32000/filewallball:0.1.0 .` (docs/deployment.md).
# Two stages: uv builds a locked, bytecode-compiled virtual environment without dev dependencies;
# the runtime stage copies only that environment onto a slim Python with libmagic.
# Both stages use the same base so the venv's interpreter path (/usr/local/bin/python3.11) holds.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /uvx /bin/

# Compile to bytecode at install time (the runtime filesystem is read-only), copy instead of
# hard-linking from the cache, never download another Python, put the venv at /app/.venv.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Dependencies first, in their own layer: it changes only when uv.lock does.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project

# Then the project itself, installed as a wheel (not editable): /src is not needed at run time.
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="FileWallBall" \
      org.opencontainers.image.description="Self-hosted file upload and management service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# libmagic1 gives python-magic the most precise type sniffing (puremagic is the fallback).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*

# A fixed, high, non-root uid/gid (the Kubernetes manifests run as 10001 too).
RUN groupadd --system --gid 10001 fwb \
    && useradd --system --uid 10001 --gid fwb --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fwb \
    && mkdir -p /data \
    && chown fwb:fwb /data \
    && chmod 0750 /data

# Owned by root and not writable by the service: the root filesystem may be read-only.
COPY --from=builder /app/.venv /app/.venv

# Only FWB_DATA_DIR (/data, a volume) and /tmp need to be writable.
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FWB_DATA_DIR=/data

VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8000

# No curl in slim images: Python's standard library does the GET (non-2xx raises, exit 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["filewallball"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
