#!/usr/bin/env bash
# `make run`: migrate, seed the demo squad, start the web server, one worker (both
# queues) and the local inference server on the embedded defaults. Ctrl-C stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${STUDIO_HOST:-127.0.0.1}
PORT=${STUDIO_PORT:-8000}

$PY manage.py migrate --noinput
$PY manage.py seed_demo

# Prometheus multiprocess mode: the gunicorn workers and the Celery worker each write
# their metrics to files here and /metrics sums them; a previous run's files go first.
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-${STUDIO_DATA_DIR:-var}/prometheus}
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete

# The local inference server (workers/server), supervised: restarted when it dies, and
# `make run` stops with an error if it keeps dying. Workers reach the local model through it.
LOCAL_PORT=${STUDIO_LOCAL_SERVER_PORT:-8001}
export STUDIO_LOCAL_SERVER_URL=${STUDIO_LOCAL_SERVER_URL:-http://127.0.0.1:$LOCAL_PORT}
# STUDIO_LOCAL_SERVER_MODELS="smollm2-135m-instruct other-model": the registered models it
# loads at start-up (default: the packaged default only); any other registered model loads on
# its first request.
MODEL_ARGS=()
for model in ${STUDIO_LOCAL_SERVER_MODELS:-}; do MODEL_ARGS+=(--model "$model"); done
$PY -m workers.server --supervise --host 127.0.0.1 --port "$LOCAL_PORT" "${MODEL_ARGS[@]}" &
SERVER=$!
.venv/bin/celery -A studio worker -Q default,gpu --concurrency 1 --loglevel INFO &
WORKER=$!
# ASGI (studio/asgi.py): pages and the API run in threads per request; a gateway stream
# waits on its upstream without holding a thread, so 200 of them do not exhaust the server.
.venv/bin/gunicorn studio.asgi:application -c studio/gunicorn.conf.py \
    -k uvicorn_worker.UvicornWorker --bind "$HOST:$PORT" --workers 2 &
WEB=$!
stop() { kill $WORKER $WEB $SERVER 2>/dev/null; wait 2>/dev/null; echo stopped; }
trap 'stop; exit 0' INT TERM
trap stop EXIT

sleep 2
echo
echo "Studio is running at http://$HOST:$PORT/  (API docs: http://$HOST:$PORT/api/v1/docs)"
echo "Local model server (OpenAI-compatible): $STUDIO_LOCAL_SERVER_URL/v1"
echo "Sign in as one of the demo users above; Ctrl-C stops the web server, worker and model server."
wait -n $WORKER $WEB $SERVER
