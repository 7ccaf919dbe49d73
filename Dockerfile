# The gateway image: daphne serving cutemarkets.asgi, also used for the feed simulator (docker-compose.yml).
# Build: docker build -t cutemarkets-gateway .    Run: see README, "Deploying".
# DJANGO_HTTPS=1: the image runs behind a TLS-terminating proxy (HSTS, redirect to https, secure cookies).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=cutemarkets.settings \
    DJANGO_STATIC_ROOT=/app/var/static \
    DJANGO_HTTPS=1

WORKDIR /app

# Dependencies first, from the lock alone (the tested versions, `make lock`), so that code changes do not reinstall
# them. Exactly what it lists; `pip check`: nothing is missing.
COPY requirements/production.txt requirements/
RUN pip install --no-deps -r requirements/production.txt \
    && pip check

COPY . .

# The code stays root-owned and read-only; the service user may write only var/ (collected static files).
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /app --shell /usr/sbin/nologin gateway \
    && mkdir -p /app/var \
    && chown gateway:gateway /app/var
USER gateway

EXPOSE 8000
ENTRYPOINT ["deploy/entrypoint.sh"]
CMD ["start"]
