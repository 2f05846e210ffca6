"""Headless Chromium for the page tests: load a URL, and get back its DOM after load, a
screenshot, the console messages and every request the page made (from Chromium's NetLog).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when missing); tests that need
it are skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.quiet_http import QuietHTTPServer

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags that keep the browser's own background traffic (updates, sync, accounts) down and make
#: every host name but loopback unresolvable, so nothing leaves the machine.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000")
_CONSOLE = re.compile(r":CONSOLE[:(]")


def chromium_binary() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium; "
                ".ci/run does it)")


@dataclass
class PageLoad:
    dom: str
    console: list[str]  # console messages (errors, CSP violations, logs)
    requests: list[str]  # URLs the page itself requested (not the browser's own traffic)

    def external_requests(self, allowed_host: str = "127.0.0.1") -> list[str]:
        return [url for url in self.requests
                if urlsplit(url).scheme in ("http", "https", "ws", "wss")
                and urlsplit(url).hostname != allowed_host]


def _page_requests(netlog: Path, page_url: str) -> list[str]:
    """URLs requested on behalf of the page: their network isolation key names the page's site
    (scheme and host, without the port)."""
    site = "{0.scheme}://{0.hostname}".format(urlsplit(page_url))
    document = json.loads(netlog.read_text())
    start_job = document["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in document["events"]:
        params = event.get("params") or {}
        if (event["type"] == start_job and "url" in params
                and site in str(params.get("network_isolation_key", ""))):
            urls.append(str(params["url"]))
    return urls


def load_page(url: str, *, screenshot: Path | None = None, window: str = "1200,1800",
              timeout: float = 90.0) -> PageLoad:
    """Load ``url`` once for its DOM, console and requests; once more for a screenshot if asked."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="rift-chromium-") as scratch:
        netlog = Path(scratch) / "netlog.json"
        profile = Path(scratch) / "profile"
        result = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}",
             f"--window-size={window}", "--dump-dom", url],
            capture_output=True, text=True, timeout=timeout, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        console = [line for line in result.stderr.splitlines() if _CONSOLE.search(line)]
        requests = _page_requests(netlog, url)
        if screenshot is not None:
            shot = subprocess.run(
                [binary, *FLAGS, f"--user-data-dir={profile}-shot", f"--window-size={window}",
                 "--hide-scrollbars", f"--screenshot={screenshot}", url],
                capture_output=True, text=True, timeout=timeout, check=False)
            assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-3000:]
    return PageLoad(result.stdout, console, requests)


class StaticPage:
    """Serves one page's bytes (with its response headers) on a loopback port, so a browser can
    load a page the API only hands to callers with a key: keys travel in a header, which a
    browser's address bar cannot send (``riftctl jobs report`` saves the page the same way)."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        import http.server
        import threading

        page_body, page_headers = body, headers

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                for name, value in page_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(page_body)))
                self.end_headers()
                self.wfile.write(page_body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/report"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StaticPage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


#: Run by the index of :class:`StaticSite` once every frame has loaded: for each page, whatever
#: is laid out wider than its screen, and every chart's text drawn past the chart's own edges
#: (cut off where the SVG ends). The frames are same-origin, so the index reads their layout;
#: the pages themselves run no script (their CSP forbids it).
LAYOUT_SCRIPT = """
window.addEventListener('load', function () {
  var out = {};
  document.querySelectorAll('iframe').forEach(function (frame) {
    var doc = frame.contentDocument, found = {charts: [], outside: []};
    found.scrollWidth = doc.documentElement.scrollWidth;
    found.clientWidth = doc.documentElement.clientWidth;
    doc.querySelectorAll('svg.chart').forEach(function (svg) {
      var box = svg.getBoundingClientRect();
      found.charts.push({chart: svg.getAttribute('data-chart'), width: box.width,
                         height: box.height, natural: svg.width.baseVal.value});
      svg.querySelectorAll('text').forEach(function (text) {
        var r = text.getBoundingClientRect();
        if (r.width && (r.left < box.left - 1 || r.right > box.right + 1 ||
                        r.top < box.top - 1 || r.bottom > box.bottom + 1))
          found.outside.push(svg.getAttribute('data-chart') + ': ' + text.textContent);
      });
    });
    out[frame.getAttribute('src')] = found;
  });
  var pre = document.createElement('pre');
  pre.id = 'layout';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
"""


def layout_of(dom: str) -> dict[str, dict[str, object]]:
    """What :data:`LAYOUT_SCRIPT` measured, by page path, from the index's DOM."""
    import html

    found = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.DOTALL)
    assert found is not None, dom[-2000:]
    return dict(json.loads(html.unescape(found.group(1))))


class StaticSite:
    """Serves several pages (path → bytes and response headers) on one loopback port, and at
    ``/`` an index that shows each in an ``<iframe>`` of ``frame`` (width, height) pixels: one
    browser start loads them all, each with its own headers (its Content-Security-Policy), and
    the index measures their layout (:data:`LAYOUT_SCRIPT`, read with :func:`layout_of`). A
    path not listed is a 404, which the NetLog shows as a request a page made."""

    def __init__(self, pages: dict[str, tuple[bytes, dict[str, str]]],
                 frame: tuple[int, int] = (1200, 800)) -> None:
        import http.server
        import threading
        from html import escape

        frames = "".join(f"<iframe src='{escape(path)}' width='{frame[0]}' "
                         f"height='{frame[1]}'></iframe>" for path in pages)
        # An empty icon: else the browser asks for /favicon.ico, a request no page made.
        index = (f"<!DOCTYPE html><html><head><link rel='icon' href='data:,'>"
                 f"<script>{LAYOUT_SCRIPT}</script></head><body>{frames}</body></html>").encode()
        served = {"/": (index, {"content-type": "text/html; charset=utf-8"}), **pages}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, headers = served.get(self.path, (b"", {}))
                self.send_response(200 if self.path in served else 404)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.page_urls = [self.url + path.lstrip("/") for path in pages]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
