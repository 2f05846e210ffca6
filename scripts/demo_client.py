"""The demo's client: runs one RiFT job through the REST API with the Python client
(``rift_client``, installed from ``clients/python``).

Uploads a checkpoint, creates a job with the given config, follows its events live, downloads
the artifacts (each SHA-256 checked by the client) and the report page (``report.html``), and
prints the MRC table, the fine-tuning epochs, the interpolation curve and the before/after
accuracies. ``scripts/demo.sh`` starts the service and calls this; it works against any
running instance (every instance wants a key, the embedded one included; it comes from
``RIFT_API_KEY``):

    RIFT_API_KEY=$(rift-admin keys create --project demo) \
    python scripts/demo_client.py --url http://127.0.0.1:8000 \
        --checkpoint model.safetensors --config config.json --out downloads/

The API key (``--api-key``, default: the ``RIFT_API_KEY`` variable) goes in the
``Authorization: Bearer`` header of every request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from rift_client import Curves, Event, Job, MRCTable, RiftClient, RiftClientError


def describe_event(event: Event) -> str | None:
    """One line for the events worth showing while the job runs."""
    kind, payload = event.kind, event.payload
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
        robust = payload.get("robust_accuracy")  # None: not attacked, it could not change the choice
        shown = f"{robust:.2f}%" if robust is not None else "not measured"
        return (f"  α = {payload.get('alpha'):.2f}: clean {payload.get('clean_accuracy', 0):.2f}%"
                f", robust {shown}")
    if kind in ("warning", "job_failed", "job_cancelled", "stage_retry", "stage_handed_back"):
        return f"{kind}: {json.dumps(payload)}"
    return None


def follow(client: RiftClient, job_id: str, timeout_s: float) -> Job:
    """Print the job's events as they happen (Server-Sent Events) until it ends; returns the
    final job."""
    deadline = time.monotonic() + timeout_s
    for event in client.stream_events(job_id):
        line = describe_event(event)
        if line:
            print(f"    {line}", flush=True)
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not finish within {timeout_s:g} s")
    return client.wait(job_id, timeout=max(1.0, deadline - time.monotonic()))


def print_mrc(table: MRCTable) -> None:
    print("\nModule robust criticality (lowest MRC = least robust-critical, fine-tuned):")
    print(f"  {'module':<28}{'params':>10}{'MRC':>12}{'robust acc drop':>18}")
    for row in table.rows:
        drop = row.robust_accuracy_drop
        marker = "  <- selected" if row.selected else ""
        drop_text = f"{drop:.2f} pts" if drop is not None else "-"
        mrc = f"{'≥ ' if row.exact is False else ''}{row.mrc:.5f}"  # ≥: stopped early
        print(f"  {row.module:<28}{row.parameters:>10}{mrc:>12}{drop_text:>18}{marker}")


def print_curves(curves: Curves) -> None:
    print(f"\nFine-tuning of {curves.selected_module}:")
    for epoch in curves.epochs:
        print(f"  epoch {epoch.epoch}: lr {epoch.lr or 0:.4g}, train loss "
              f"{epoch.train_loss or 0:.3f}, validation accuracy {epoch.val_accuracy or 0:.2f}%")
    print("Interpolation θ_α = (1 − α) θ_AT + α θ_FT:")
    for point in curves.interpolation:
        marker = "  <- chosen" if point.chosen else ""
        robust = point.robust_accuracy  # None: not attacked, it could not change the choice
        shown = f"{robust:6.2f}%" if robust is not None else "  not measured"
        print(f"  α = {point.alpha:.2f}: clean {point.clean_accuracy:6.2f}%, robust {shown}{marker}")


def run(args: argparse.Namespace) -> int:
    config = json.loads(Path(args.config).read_text())
    checkpoint = Path(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.api_key:
        raise SystemExit("an API key is needed: --api-key or RIFT_API_KEY (create one with "
                         "rift-admin keys create --project NAME)")
    with RiftClient(args.url, api_key=args.api_key, timeout=120) as client:
        client.wait_until_ready(args.ready_timeout)
        print(f"==> uploading {checkpoint.name} ({checkpoint.stat().st_size} bytes)")
        record = client.upload_checkpoint(checkpoint)
        print(f"    checkpoint {record.id}: {record.format}, {record.num_tensors} tensors, "
              f"sha256 {record.sha256[:16]}… (matches the file)")

        print("==> creating the job")
        job = client.create_job({"config": config, "labels": {"source": "demo"}},
                                checkpoint_id=record.id, idempotency_key=f"demo-{uuid.uuid4().hex}")
        print(f"    job {job.id} {job.status}; following its events")
        job = follow(client, job.id, args.job_timeout)
        if job.status != "succeeded":
            error = job.error
            print(f"job {job.status}: {error.code if error else None}: "
                  f"{error.message if error else None}", file=sys.stderr)
            return 1

        print_mrc(client.get_mrc(job.id))
        print_curves(client.get_curves(job.id))

        print("\n==> downloading the artifacts")
        for artifact in client.list_artifacts(job.id):
            target = client.download(job.id, artifact.name, out)
            print(f"    {target} ({artifact.size} bytes, sha256 verified)")
        # The report page, to open in a browser (which cannot send the key the route needs);
        # scripts/report_screenshot.py makes docs/report.png from it.
        print(f"    {client.download_report(job.id, out / 'report.html')} (the report page)")

    metrics = job.metrics or {}
    before, after = metrics.get("before", {}), metrics.get("after", {})
    print(f"\nRiFT on {job.device}: module {job.selected_module}, chosen α = {job.chosen_alpha:g}")
    print(f"  {'':<8}{'clean':>10}{'robust':>10}")
    for name, values in (("before", before), ("after", after)):
        print(f"  {name:<8}{values.get('clean_accuracy', float('nan')):>9.2f}%"
              f"{values.get('robust_accuracy', float('nan')):>9.2f}%")
    print(f"Tuned weights: {out / 'tuned.safetensors'}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="The API's base URL.")
    parser.add_argument("--api-key", default=os.environ.get("RIFT_API_KEY"),
                        help="API key (default: $RIFT_API_KEY).")
    parser.add_argument("--checkpoint", required=True, help="Checkpoint file to upload.")
    parser.add_argument("--config", required=True, help="JSON file with the job's RiftConfig.")
    parser.add_argument("--out", default="downloads", help="Folder for the downloaded files.")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="Seconds.")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="Seconds.")
    try:
        sys.exit(run(parser.parse_args()))
    except RiftClientError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
