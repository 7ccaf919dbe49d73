#!/bin/sh
# The gateway's production entry point: the container's command and `make serve`.
#   entrypoint.sh start   apply migrations, collect static files, then run daphne (the default)
#   entrypoint.sh serve   run daphne only
#   entrypoint.sh CMD...  run CMD (e.g. the feed simulator, or manage.py) with the image's environment
# daphne replaces the shell (exec), so it receives SIGTERM itself and drains its WebSockets (streaming.daphne.shutdown).
set -eu
cd "$(dirname "$0")/.."
# Every WebSocket is an open file: raise the limit (often 1,024) to 65,536 where allowed, else to the hard limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -H -n)" 2>/dev/null || true

serve() {
    exec python -m daphne \
        --bind "${GATEWAY_BIND:-0.0.0.0}" \
        --port "${GATEWAY_PORT:-8000}" \
        --proxy-headers \
        --websocket_timeout -1 \
        --ping-interval "${GATEWAY_PING_INTERVAL:-20}" \
        --ping-timeout "${GATEWAY_PING_TIMEOUT:-30}" \
        --application-close-timeout "${GATEWAY_APPLICATION_CLOSE_TIMEOUT:-20}" \
        cutemarkets.asgi:application
}

case "${1:-start}" in
    start)
        if [ "${MIGRATE_ON_START:-1}" = "1" ]; then
            python manage.py migrate --no-input
        fi
        python manage.py collectstatic --no-input --verbosity 0
        serve
        ;;
    serve)
        serve
        ;;
    *)
        exec "$@"
        ;;
esac
