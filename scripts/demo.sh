#!/usr/bin/env bash
# The embedded demo, the README's first command: sets up .venv, starts the API and one Celery
# worker with the embedded defaults (SQLite, a local folder as object store, kombu's SQLAlchemy
# broker: no server to install), makes a small adversarially trained checkpoint (small_cnn on the
# scikit-learn digits), and runs one RiFT job on it through HTTP (scripts/demo_client.py).
# Everything lives under var/demo (RIFT_DEMO_DIR); the API listens on RIFT_DEMO_PORT (default: a
# free port; 8000, the README's, with --serve). The server and the worker are stopped when the script ends, however it ends; with
# --serve the script does not end after the demo job: the service stays up for the README's
# examples (riftctl, the Python client, curl) until Ctrl-C.
set -euo pipefail
serve=0
serving=0
for arg in "$@"; do
  case "$arg" in
    --serve) serve=1 ;;
    -h|--help)
      echo "usage: bash scripts/demo.sh [--serve]   (--serve: keep the service up after the demo job, until Ctrl-C)"
      exit 0 ;;
    *)
      echo "scripts/demo.sh: unknown argument '$arg' (the only one is --serve)" >&2
      exit 2 ;;
  esac
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/ensure_venv.sh
py="$root/.venv/bin/python"

demo_dir="${RIFT_DEMO_DIR:-$root/var/demo}"
mkdir -p "$demo_dir"
demo_dir="$(cd "$demo_dir" && pwd)"
export DATABASE_URL="sqlite:///$demo_dir/rift.db"
export BROKER_URL="sqla+sqlite:///$demo_dir/broker.db"
export CELERY_QUEUE="rift-demo"
# The demo worker also delivers webhooks (their own queue in production).
export WEBHOOK_QUEUE="rift-demo-webhooks"
export STORE_KIND="local"
export STORE_ROOT="$demo_dir/objects"
export WORK_DIR="$demo_dir/work"
export PROGRESS_INTERVAL_SECONDS="0.5"
if [ "$serve" = 1 ]; then
  # The README's examples name http://127.0.0.1:8000: a served demo listens there by default.
  port="${RIFT_DEMO_PORT:-8000}"
else
  port="${RIFT_DEMO_PORT:-$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
fi
url="http://127.0.0.1:$port"

echo "==> migrating the database ($DATABASE_URL)"
"$py" -m persistence.migrate

# Auth is on in every mode: the demo makes its own key (rift-admin prints it alone on stdout).
echo "==> creating an API key for the project 'demo' (rift-admin keys create)"
RIFT_API_KEY="$("$py" -m persistence.admin_cli keys create --project demo --name demo 2>/dev/null)"
export RIFT_API_KEY

pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$serving" = 1 ]; then  # Ctrl-C ends a --serve run: not a failure
    echo "stopped the service (its data stays in $demo_dir)" >&2
    status=0
  elif [ "$status" -ne 0 ]; then
    echo "demo failed (exit $status); logs: $demo_dir/api.log, $demo_dir/worker.log" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> starting the API on $url (log: $demo_dir/api.log)"
"$root/.venv/bin/uvicorn" --factory api.main:create_app --host 127.0.0.1 --port "$port" \
  >"$demo_dir/api.log" 2>&1 &
pids+=("$!")

echo "==> starting a Celery worker (log: $demo_dir/worker.log)"
"$root/.venv/bin/celery" -A worker.celery_app worker --pool=solo --concurrency=1 \
  -Q "$CELERY_QUEUE,$WEBHOOK_QUEUE" --without-gossip --without-mingle --loglevel=INFO -n "demo@%h" \
  >"$demo_dir/worker.log" 2>&1 &
pids+=("$!")

checkpoint="$demo_dir/digits-small-cnn.safetensors"
config="$demo_dir/digits-job.json"
if [ ! -f "$checkpoint" ] || [ ! -f "$config" ]; then
  echo "==> adversarially training small_cnn on the digits (the demo's θ_AT)"
  "$py" - "$checkpoint" "$config" <<'PY'
import json
import sys

from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint

info = make_digits_checkpoint(sys.argv[1], seed=0)
with open(sys.argv[2], "w") as handle:
    json.dump(DIGITS_DEMO_CONFIG, handle, indent=2)
print(f"    clean {info['clean_accuracy']:.2f}%, robust {info['robust_accuracy']:.2f}% "
      f"on the test split ({info['seconds']:.1f} s)")
PY
fi

echo "==> running the demo job through $url"
"$py" scripts/demo_client.py --url "$url" --checkpoint "$checkpoint" --config "$config" \
  --out "$demo_dir/downloads"

if [ "$serve" = 1 ]; then
  cat <<EOF
==> the service stays up at $url until Ctrl-C (logs: $demo_dir/api.log, $demo_dir/worker.log)
    In another shell, for the README's examples (riftctl, the Python client, curl):
      export RIFT_API_URL=$url RIFT=$url RIFT_API_KEY=$RIFT_API_KEY
      cp $checkpoint model.safetensors; cp $config config.json
EOF
  serving=1
  wait || true  # the children also get the terminal's Ctrl-C, and may end first
fi
