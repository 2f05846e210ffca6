"""A PNG of a saved job report page, taken by headless Chromium: how ``docs/report.png`` is made.

    bash scripts/demo.sh                          # saves var/demo/downloads/report.html
    .venv/bin/python scripts/report_screenshot.py var/demo/downloads/report.html docs/report.png

The page is read from the file (``riftctl jobs report JOB_ID --out report.html`` saves one too):
the API's ``/report`` route needs a key, which a browser's address bar cannot send. The page is
self-contained (no script, no request), so a file URL draws it as the API serves it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Where Chromium is looked for, in order (Debian's package, then the names on PATH).
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
#: Headless, without a sandbox (containers run it as root), a GPU, first-run pages or a network
#: beyond the file itself.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--force-device-scale-factor=1")


def chromium() -> str:
    """The first Chromium found; exits naming the ones looked for when there is none."""
    for name in CHROMIUM:
        if found := shutil.which(name):
            return found
    raise SystemExit(f"report_screenshot: no Chromium found (looked for {', '.join(CHROMIUM)})")


def screenshot(page: Path, target: Path, *, width: int, height: int,
               timeout_s: float = 120.0) -> None:
    """Draw ``page`` in a ``width`` × ``height`` window and write the PNG to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rift-screenshot-") as profile:
        result = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={target.resolve()}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0 or not target.exists():
        raise SystemExit(f"report_screenshot: Chromium failed ({result.returncode}):\n"
                         f"{result.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="A saved report page (report.html).")
    parser.add_argument("target", type=Path, help="The PNG to write (e.g. docs/report.png).")
    parser.add_argument("--width", type=int, default=1000, help="Window width (px).")
    parser.add_argument("--height", type=int, default=2275,
                        help="Window height (px): the part of the page drawn, from its top.")
    args = parser.parse_args()
    if not args.page.is_file():
        raise SystemExit(f"report_screenshot: {args.page}: no such file")
    screenshot(args.page, args.target, width=args.width, height=args.height)
    print(f"{args.target} ({args.target.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
