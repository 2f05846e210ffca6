#!/usr/bin/env bash
# Sets up .venv when needed and runs the whole test suite (library, persistence, worker, API).
# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (see .ci/run, which starts them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/ensure_venv.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
