#!/usr/bin/env bash
# The whole suite. Pass 1 runs against whatever DATABASE_URL / CELERY_BROKER_URL /
# CACHE_URL say (PostgreSQL and Redis in CI). When those point at servers, pass 2
# runs the suite again on the embedded defaults (SQLite, filesystem broker,
# file cache), which is what `make run` uses.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# One test process per core, at most 4 (pytest-xdist); a file's tests stay in one
# process, so its module fixtures (a server, a loaded model) start once. Each process
# has its own database, data folder and Redis databases (studio/settings/test.py).
# STUDIO_TEST_PROCESSES=0 runs in this process alone (e.g. to use pdb).
PROCS=(-n "${STUDIO_TEST_PROCESSES:-auto}" --maxprocesses 4 --dist loadfile)
[[ "${STUDIO_TEST_PROCESSES:-}" == "0" ]] && PROCS=(-p no:xdist)

echo "== pass 1: DATABASE_URL=${DATABASE_URL:-<embedded sqlite>} CELERY_BROKER_URL=${CELERY_BROKER_URL:-<filesystem>} CACHE_URL=${CACHE_URL:-<locmem>}"
$PY -m pytest "${PROCS[@]}" "$@"

if [[ -n "${DATABASE_URL:-}${CELERY_BROKER_URL:-}${CACHE_URL:-}" ]]; then
  echo "== pass 2: embedded defaults (SQLite, filesystem broker, file cache)"
  env -u DATABASE_URL -u CELERY_BROKER_URL -u CACHE_URL \
    STUDIO_DATA_DIR="$PWD/var/test-embedded" \
    $PY -m pytest "${PROCS[@]}" -m "not browser and not model and not fuzz" "$@"
fi
