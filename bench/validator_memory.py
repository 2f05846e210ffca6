"""Memory of the upload validators with ``uvicorn --workers N``: a private validator server per
API process (the default) against one server for the host (``VALIDATION_SOCKET``).

For each mode: a fresh migrated Postgres database, the API with ``--workers N`` on loopback,
``--uploads`` checkpoint uploads sent ``--concurrency`` at a time (so that every worker process
is likely to check some), then the validator servers alive (``python -m validator --socket``):
their count, summed RSS and summed PSS, each server's with its spare and check children's
(``/proc/PID/smaps_rollup``: pages shared between processes, torch's libraries among them, are
split between them instead of counted in each).
Prints one JSON document (and writes it with ``--output``):

    PYTHONPATH=. .venv/bin/python bench/validator_memory.py --workers 4 \\
        --output bench/results/validator_memory_4workers_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from service_load import api_server, free_port, fresh_database

ROOT = Path(__file__).resolve().parent.parent


def write_key(database_url: str) -> str:
    """A read/write key of a new project 'bench'."""
    from persistence.api_keys import create_key, create_project
    from persistence.db import session_factory_from_settings
    from persistence.settings import Settings

    factory = session_factory_from_settings(Settings(database_url=database_url))
    with factory() as session:
        key = create_key(session, create_project(session, "bench"), ["read", "write"],
                         name="bench").key
    factory.kw["bind"].dispose()
    return key


def small_checkpoint(folder: Path) -> bytes:
    import torch

    from rift.checkpoints import save_safetensors
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    torch.manual_seed(0)
    path = folder / "small_cnn.safetensors"
    model = build_model(ArchitectureSpec(name="small_cnn", num_classes=10), in_channels=1,
                        image_size=8)
    save_safetensors(path, model.state_dict())
    return path.read_bytes()


def validator_processes(proc: Path = Path("/proc")) -> dict[int, dict[str, Any]]:
    """Every running ``python -m validator`` process (servers and their forked children): its
    command line, socket, parent pid, RSS and PSS (kB). ``proc``: the procfs to read."""
    servers = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"validator" not in command or b"--socket" not in command:
                continue
            socket = command[command.index(b"--socket") + 1].decode(errors="replace")
            memory = {line.split(":")[0]: int(line.split()[1])
                      for line in (entry / "smaps_rollup").read_text().splitlines()[1:]
                      if line.split()[-1] == "kB"}
            # The stat line's fields after the command name (which may hold spaces): state,
            # ppid. Read inside the try: a check's child (of this run or of anything else on
            # the host) may exit between the reads, and its entry then vanishes.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        servers[int(entry.name)] = {"command": b" ".join(command).decode(errors="replace"),
                                    "socket": socket, "parent": parent,
                                    "rss_kb": memory.get("Rss", 0), "pss_kb": memory.get("Pss", 0)}
    return servers


def servers_with_children(processes: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The servers among ``validator_processes()``' processes (a server's forked children, its
    spares and running checks, carry its command line too), each with its children's memory
    added: what the server costs the host."""
    servers = {pid: dict(p) for pid, p in processes.items() if p["parent"] not in processes}
    for process in processes.values():
        if process["parent"] in servers:
            owner = servers[process["parent"]]
            owner["rss_kb"] += process["rss_kb"]
            owner["pss_kb"] += process["pss_kb"]
    return servers


def measure(mode: str, args: argparse.Namespace, content: bytes, folder: Path) -> dict[str, Any]:
    before = set(validator_processes())
    # Every socket of this measurement lies under ``own``: the shared one by setting, the private
    # ones in the API processes' temporary folders. Servers started meanwhile by anything else
    # on the machine (other tests, other services) are not counted.
    own = folder / mode
    (own / "tmp").mkdir(parents=True, exist_ok=True)
    socket_path = own / "validator.sock"
    extra = {"TMPDIR": str(own / "tmp")}
    if mode == "shared":
        extra["VALIDATION_SOCKET"] = str(socket_path)
    with fresh_database(args.admin_url) as database_url:
        key = write_key(database_url)
        with api_server(database_url, args.workers, free_port(), folder / f"api-{mode}.log",
                        extra, settle_s=args.settle_seconds) as url:
            headers = {"Authorization": f"Bearer {key}",
                       "Content-Type": "application/octet-stream"}

            def upload(index: int) -> int:
                return httpx.post(f"{url}/v1/checkpoints",
                                  params={"filename": f"m{index}.safetensors"}, content=content,
                                  headers=headers, timeout=300).status_code

            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                statuses = list(pool.map(upload, range(args.uploads)))
            wall = time.monotonic() - started
            time.sleep(args.settle_seconds)  # the last checks' children exit
            servers = servers_with_children({
                pid: server for pid, server in validator_processes().items()
                if pid not in before and Path(server["socket"]).is_relative_to(own)})
    if mode == "shared":
        for pid in servers:  # the shared server outlives the API; stop it
            os.kill(pid, signal.SIGTERM)
    return {"uploads": len(statuses), "accepted": statuses.count(201),
            "uploads_wall_seconds": round(wall, 2), "validator_servers": len(servers),
            "rss_mb": round(sum(s["rss_kb"] for s in servers.values()) / 1024, 1),
            "pss_mb": round(sum(s["pss_kb"] for s in servers.values()) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--admin-url", default=os.environ.get(
        "RIFT_BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--settle-seconds", type=float, default=1.0,
                        help="wait after the API answers (its other workers finish starting) and "
                        "after the uploads (the checks' children exit) before counting; the "
                        "tests' smoke run waits less: it checks the counts, not the memory")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rvm-") as temporary:
        folder = Path(temporary)
        content = small_checkpoint(folder)
        modes = {mode: measure(mode, args, content, folder) for mode in ("private", "shared")}
    result = {"bench": "validator_memory", "workers": args.workers, **modes,
              "pss_ratio_private_over_shared": round(
                  modes["private"]["pss_mb"] / max(modes["shared"]["pss_mb"], 1e-9), 2)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
