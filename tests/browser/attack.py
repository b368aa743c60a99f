"""A hostile web page and a real headless Chromium to load it (Debian's ``chromium`` package).

``attack_page(target_port)`` is what a site the artist visits could serve: it auto-submits a
form POST to the server, then a ``no-cors`` fetch of a multipart job with two PNGs drawn on a
canvas (exactly what such a page can send without any permission), then the same through a
foreign host name that resolves to this machine (DNS rebinding; here Chromium's
``--host-resolver-rules`` maps ``evil.example`` to 127.0.0.1). ``PageServer`` serves it on a port
of its own. Shared by tests/browser and bench/security_probe.py.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

FOREIGN_NAME = "evil.example"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def attack_page(target_port: int) -> str:
    target = f"http://127.0.0.1:{target_port}"
    foreign = f"http://{FOREIGN_NAME}:{target_port}"
    job = '{"iterations": 3, "max_size": 64}'
    return f"""<!doctype html>
<html><body>
<pre id="out">page loaded</pre>
<iframe name="sink"></iframe>
<form id="form" method="POST" enctype="multipart/form-data" action="{target}/v1/stylize"
      target="sink">
  <input type="hidden" name="params" value='{job}'>
  <textarea name="content">not a file</textarea><textarea name="style">nor this</textarea>
</form>
<script>
const out = document.getElementById("out");
const log = (m) => {{ out.textContent += "\\n" + m; }};
function png() {{
  const canvas = document.createElement("canvas");
  canvas.width = 64; canvas.height = 48;
  const g = canvas.getContext("2d");
  g.fillStyle = "#3a6"; g.fillRect(0, 0, 64, 48);
  g.fillStyle = "#e42"; g.fillRect(10, 10, 30, 20);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}}
async function job() {{
  const blob = await png();
  const form = new FormData();
  form.append("content", blob, "c.png");
  form.append("style", blob, "s.png");
  form.append("params", '{job}');
  return form;
}}
async function send(label, url) {{
  try {{
    await fetch(url, {{method: "POST", mode: "no-cors", body: await job()}});
    log(label + " sent");
  }} catch (e) {{
    log(label + " failed: " + e);
  }}
}}
(async () => {{
  document.getElementById("form").submit();
  log("form posted");
  await send("no-cors fetch", "{target}/v1/jobs");
  await send("foreign-host fetch", "{foreign}/v1/jobs");
  await new Promise((r) => setTimeout(r, 500));
  log("done");
}})();
</script>
</body></html>
"""


class PageServer:
    """Serves one HTML page at / on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def load(url: str, *, budget_ms: int = 8000, timeout: float = 90.0) -> str:
    """Load ``url`` in a fresh headless Chromium, run its scripts for ``budget_ms`` of virtual
    time, and return the DOM as HTML."""
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="nst-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",  # as root
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--host-resolver-rules=MAP {FOREIGN_NAME} 127.0.0.1",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HOME": profile},
            cwd=Path(profile),
        )
    return done.stdout
