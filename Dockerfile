# dd-api production image: hypercorn -c hypercorn.toml dd_api.asgi:app on port 7000.
#
# NOTE: this file has not been built: the machine it was written on has no Docker engine.
# It is kept minimal on purpose; build and smoke-test it before relying on it:
#   docker build -t dd-api . && docker run --rm -p 7000:7000 -e AUTH_TOKENS=... dd-api
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libmagic: python-magic decides the type of every upload with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY compat ./compat
# Dependencies are pinned in pyproject.toml. The second command fails the build when the
# OpenAPI description was left out of the package (the app refuses to start without it).
RUN pip install . \
    && python -c "import importlib.resources as r; r.files('dd_api').joinpath('openapi.json').read_bytes()" \
    && rm -rf /app/src /app/compat /app/build

COPY hypercorn.toml ./

# Not root. The local store's default directory (./var/documents) is the only place written
# to besides /tmp (scan copies); production uses DOCUMENT_STORE=s3.
RUN useradd --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin dd-api \
    && mkdir -p /app/var \
    && chown dd-api /app/var
USER 10001

EXPOSE 7000
# Exec form: Hypercorn is PID 1 and gets the SIGTERM itself (workers = 0 in hypercorn.toml),
# so background scans get BACKGROUND_TASK_SHUTDOWN_TIMEOUT to finish.
ENTRYPOINT ["hypercorn", "-c", "hypercorn.toml", "dd_api.asgi:app"]
