# syntax=docker/dockerfile:1
# aibot's image: `aibot run` by default; `aibot worker` and `aibot migrate` are the same image with
# another command (see compose.yaml). Build: docker build -t aibot .

# ---- build: resolve the locked dependencies and install the project into /app/.venv ----------------
FROM python:3.11-slim AS build

# The uv that wrote uv.lock, from its official image (no pip, no curl needed).
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv

# Compile bytecode now: the runtime user cannot write __pycache__ into the venv, and starts are faster.
# Copy files out of uv's cache (a cache mount cannot be hard-linked into the image). Use the image's
# Python, never one uv would download.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Dependencies first, from the lock file alone: this layer is rebuilt only when they change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --no-install-project

# Then the project itself, installed as a wheel (not editable): the runtime image needs no source tree.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

# ---- runtime: the venv only, run by an unprivileged user ---------------------------------------------
FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 aibot \
    && useradd --system --uid 10001 --gid aibot --home-dir /data --create-home --shell /usr/sbin/nologin aibot

COPY --from=build /app/.venv /app/.venv

# HTTP_HOST: a server bound to the container's loopback could not be reached from outside it.
# /data is the working folder: the default SQLite file (./aibot.db) and an optional .env live there.
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HTTP_HOST=0.0.0.0

USER aibot
WORKDIR /data
EXPOSE 8080

# Exec form: aibot is PID 1 and gets SIGTERM itself, so `docker stop` ends it cleanly (it lets running
# generations finish for a few seconds and hands the rest back).
CMD ["aibot", "run"]
