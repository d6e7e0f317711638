# FileWallBall image: `DOCKER_BUILDKIT=1 docker build -t localhost:32000/filewallball:0.1.0 .`
# or `buildah build --format docker -t localhost:32000/filewallball:0.1.0 .` (docs/deployment.md).
# Two stages: uv builds a locked, bytecode-compiled virtual environment without dev dependencies;
# the runtime stage copies only that environment onto a slim Python with libmagic.
# Both stages use the same base so the venv's interpreter path holds; uv takes the python3.11
# on PATH (/usr/local/bin in the official image, /usr/bin in a Debian-built one).
#
# Portable on purpose: no `# syntax=` line (it would fetch a frontend from Docker Hub), only
# `RUN --mount` forms that the BuildKit built into Debian 12's docker.io (20.10) and buildah
# both understand, with absolute targets (buildah rejects relative ones). The classic Docker
# builder cannot do `RUN --mount`: BuildKit is required.

ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
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
    UV_PYTHON=python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Dependencies first, in their own layer: it changes only when uv.lock does.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/src/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project

# Then the project itself, installed as a wheel (not editable): /src is not needed at run time.
# uv leaves its lock file world-writable (0666); nothing in the image may be writable by others.
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
    && rm -f /app/.venv/.lock \
    && chmod -R go-w /app/.venv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

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

# No curl in slim images: Python's standard library does the GET (non-2xx raises, exit 1). The
# port is the last `--port` on the container's command line (`serve --port 9000` is probed on
# 9000), else 8000. Docker runs it; buildah and podman keep it only with `--format docker`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; a = open('/proc/1/cmdline').read().split('\\0'); p = [a[i + 1] if x == '--port' else x[7:] for i, x in enumerate(a) if x == '--port' or x.startswith('--port=')]; r.urlopen(f'http://127.0.0.1:{(p or [8000])[-1]}/healthz', timeout=4)"]

ENTRYPOINT ["filewallball"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# Last, so that a new version, revision or date changes only this metadata: every layer above
# stays cached (build arguments declared earlier would be part of their cache keys).
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="FileWallBall" \
      org.opencontainers.image.description="Self-hosted file upload and management service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
