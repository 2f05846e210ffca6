"""The demo's client: runs one RiFT job through the REST API, using nothing but HTTP.

Uploads a checkpoint, creates a job with the given config, follows its progress and events,
downloads the tuned weights (checking their SHA-256), and prints the MRC table, the fine-tuning
epochs, the interpolation curve and the before/after accuracies. ``scripts/demo.sh`` starts the
service and calls this; it works against any running instance:

    python scripts/demo_client.py --url http://127.0.0.1:8000 \
        --checkpoint model.safetensors --config config.json --out downloads/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

POLL_INTERVAL_S = 1.0


def wait_until_ready(client: httpx.Client, timeout_s: float) -> None:
    """Wait for ``/readyz`` to answer 200 (database, broker and store reachable)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = client.get("/readyz")
            if response.status_code == 200:
                return
            last = response.json().get("error", {}).get("message", response.text)
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"the API did not become ready within {timeout_s:g} s: {last}")


def check(response: httpx.Response, *expected: int) -> dict[str, Any]:
    """The JSON body, or exit with the API's error message."""
    if response.status_code not in expected:
        try:
            error = response.json().get("error", {})
            message = f"{error.get('code')}: {error.get('message')} (field: {error.get('field')})"
        except ValueError:
            message = response.text
        raise SystemExit(f"{response.request.method} {response.request.url.path} answered "
                         f"{response.status_code}: {message}")
    return dict(response.json())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_event(event: dict[str, Any]) -> str | None:
    """One line for the events worth showing while the job runs."""
    kind, payload = event["kind"], event["payload"]
    if kind == "stage_started":
        return f"stage {payload.get('stage')} started (attempt {payload.get('attempt')})"
    if kind == "stage_finished":
        details = {k: v for k, v in payload.items() if k not in ("stage",) and
                   not isinstance(v, dict | list)}
        return f"stage {payload.get('stage')} finished {json.dumps(details)}"
    if kind == "module_scored":
        return f"  {payload.get('name')}: MRC {payload.get('mrc', 0):.5f}"
    if kind == "epoch":
        return (f"  epoch {payload.get('epoch')}: train loss {payload.get('train_loss', 0):.3f}, "
                f"validation accuracy {payload.get('val_accuracy', 0):.2f}%")
    if kind == "interpolation_point":
        return (f"  α = {payload.get('alpha'):.2f}: clean {payload.get('clean_accuracy', 0):.2f}%"
                f", robust {payload.get('robust_accuracy', 0):.2f}%")
    if kind in ("warning", "job_failed", "job_cancelled", "stage_retry"):
        return f"{kind}: {json.dumps(payload)}"
    return None


def follow(client: httpx.Client, job_id: str, timeout_s: float) -> dict[str, Any]:
    """Print progress and events until the job ends; returns the final job."""
    after = 0
    shown_progress = ""
    deadline = time.monotonic() + timeout_s
    while True:
        page = check(client.get(f"/v1/jobs/{job_id}/events", params={"after": after}), 200)
        for event in page["items"]:
            line = describe_event(event)
            if line:
                print(f"    {line}", flush=True)
        after = page["next_after"]
        job = check(client.get(f"/v1/jobs/{job_id}"), 200)
        if job["status"] in ("succeeded", "failed", "cancelled") and page["finished"]:
            return job
        progress = (f"{job['status']}" + (f", stage {job['stage']} {job['progress'] * 100:.0f}%"
                                          if job["stage"] else "")
                    + (f" (queue position {job['queue_position']})"
                       if job["queue_position"] else ""))
        if progress != shown_progress:
            print(f"  [{progress}] {job.get('progress_message') or ''}", flush=True)
            shown_progress = progress
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not finish within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)


def download(client: httpx.Client, url: str, target: Path) -> str:
    """Stream ``url`` to ``target`` (following a presigned-URL redirect); returns its SHA-256."""
    digest = hashlib.sha256()
    with client.stream("GET", url, follow_redirects=True) as response:
        if response.status_code != 200:
            response.read()
            check(response, 200)
        with target.open("wb") as handle:
            for block in response.iter_bytes():
                digest.update(block)
                handle.write(block)
    return digest.hexdigest()


def print_mrc(table: dict[str, Any]) -> None:
    print("\nModule robust criticality (lowest MRC = least robust-critical, fine-tuned):")
    print(f"  {'module':<28}{'params':>10}{'MRC':>12}{'robust acc drop':>18}")
    for row in table["rows"]:
        drop = row["robust_accuracy_drop"]
        marker = "  <- selected" if row["selected"] else ""
        drop_text = f"{drop:.2f} pts" if drop is not None else "-"
        print(f"  {row['module']:<28}{row['parameters']:>10}{row['mrc']:>12.5f}"
              f"{drop_text:>18}{marker}")


def print_curves(curves: dict[str, Any]) -> None:
    print(f"\nFine-tuning of {curves['selected_module']}:")
    for epoch in curves["epochs"]:
        print(f"  epoch {epoch['epoch']}: lr {epoch['lr']:.4g}, train loss "
              f"{epoch['train_loss']:.3f}, validation accuracy {epoch['val_accuracy']:.2f}%")
    print("Interpolation θ_α = (1 − α) θ_AT + α θ_FT:")
    for point in curves["interpolation"]:
        marker = "  <- chosen" if point["chosen"] else ""
        robust = point["robust_accuracy"]  # null: not attacked, it could not change the choice
        shown = f"{robust:6.2f}%" if robust is not None else "  not measured"
        print(f"  α = {point['alpha']:.2f}: clean {point['clean_accuracy']:6.2f}%, "
              f"robust {shown}{marker}")


def run(args: argparse.Namespace) -> int:
    config = json.loads(Path(args.config).read_text())
    checkpoint = Path(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=args.url, timeout=120) as client:
        wait_until_ready(client, args.ready_timeout)
        print(f"==> uploading {checkpoint.name} ({checkpoint.stat().st_size} bytes)")
        with checkpoint.open("rb") as handle:
            record = check(client.post("/v1/checkpoints",
                                       files={"file": (checkpoint.name, handle)}), 201)
        if record["sha256"] != sha256_of(checkpoint):
            raise SystemExit("the server's SHA-256 of the upload differs from the file's")
        print(f"    checkpoint {record['id']}: {record['format']}, {record['num_tensors']} "
              f"tensors, sha256 {record['sha256'][:16]}…")

        print("==> creating the job")
        job = check(client.post("/v1/jobs", json={
            "checkpoint_id": record["id"], "config": config, "labels": {"source": "demo"},
        }, headers={"Idempotency-Key": f"demo-{uuid.uuid4().hex}"}), 201)
        print(f"    job {job['id']} {job['status']}; following it")
        job = follow(client, job["id"], args.job_timeout)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            print(f"job {job['status']}: {error.get('code')}: {error.get('message')}",
                  file=sys.stderr)
            return 1

        print_mrc(check(client.get(f"/v1/jobs/{job['id']}/mrc"), 200))
        print_curves(check(client.get(f"/v1/jobs/{job['id']}/curves"), 200))

        print("\n==> downloading the artifacts")
        artifacts = check(client.get(f"/v1/jobs/{job['id']}/artifacts"), 200)["items"]
        for artifact in artifacts:
            target = out / artifact["name"]
            digest = download(client, artifact["url"], target)
            if digest != artifact["sha256"]:
                raise SystemExit(f"{artifact['name']}: SHA-256 {digest} differs from the "
                                 f"reported {artifact['sha256']}")
            print(f"    {target} ({artifact['size']} bytes, sha256 verified)")

    metrics = job["metrics"] or {}
    before, after = metrics.get("before", {}), metrics.get("after", {})
    print(f"\nRiFT on {job['device']}: module {job['selected_module']}, chosen α = "
          f"{job['chosen_alpha']:g}")
    print(f"  {'':<8}{'clean':>10}{'robust':>10}")
    for name, values in (("before", before), ("after", after)):
        print(f"  {name:<8}{values.get('clean_accuracy', float('nan')):>9.2f}%"
              f"{values.get('robust_accuracy', float('nan')):>9.2f}%")
    print(f"Tuned weights: {out / 'tuned.safetensors'}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="The API's base URL.")
    parser.add_argument("--checkpoint", required=True, help="Checkpoint file to upload.")
    parser.add_argument("--config", required=True, help="JSON file with the job's RiftConfig.")
    parser.add_argument("--out", default="downloads", help="Folder for the downloaded files.")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="Seconds.")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="Seconds.")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
