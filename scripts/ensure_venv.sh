#!/usr/bin/env bash
# Creates the project's virtualenv at .venv (when missing or stale) and installs the project and its
# client package (clients/python: rift_client, riftctl) into it.
# Idempotent: a second run with unchanged pyproject.toml does nothing but a quick check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtualenv at .venv"
  "$python_bin" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing the project and its dependencies into .venv (torch takes a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]" -e clients/python
  rm -f .venv/.installed-*
  touch "$stamp"
fi
