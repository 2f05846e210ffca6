#!/usr/bin/env bash
# Sets up .venv when needed, then runs ruff, mypy and the whole test suite (library, persistence,
# worker, API).
# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (see .ci/run, which starts them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/ensure_venv.sh
# Lint and types first: seconds, and they catch what tests often miss.
.venv/bin/ruff check --quiet .
.venv/bin/mypy --no-error-summary rift persistence api worker validator reporting clients/python/rift_client
# One pytest process per core plus one (RIFT_TEST_PROCESSES overrides): much of the suite waits
# on worker and API processes, so a spare process keeps the cores busy (on 2 cores, 3 processes
# ran the suite in 16 min 20 s where 2 had done 42 % in 9 min 30 s, same commit, quiet machine).
# Each test has its own database, queue and folders.
processes="${RIFT_TEST_PROCESSES:-$(( $(nproc) + 1 ))}"
# --durations: the slowest tests in every run's log, where the next cut of the suite's time starts.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$processes" --durations=25 "$@"
