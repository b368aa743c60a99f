"""A real browser against the real server: pages of other origins cannot use it.

Headless Chromium loads a hostile page (tests/browser/attack.py) from another port of this
machine and from a foreign name that resolves here; the page tries a form POST, a ``no-cors``
fetch of a complete multipart job and the same through the foreign Host. Every request reaches
the server (its log says so) and every one is refused with 403, and the server did no work: no
job was ever queued. Chromium then opens the server under the foreign name, as a DNS-rebinding
page would read it: 403, nothing of the health body. Fails, never skips, in CI without Chromium.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator

import pytest

from tests.browser.attack import FOREIGN_NAME, PageServer, attack_page, chromium_path, load
from tests.live_server import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    if chromium_path() is None:
        message = "chromium is not installed (apt-get install chromium): browser tests not run"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    srv = LiveServer(tmp_path_factory.mktemp("browser-live"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def refusals(server: LiveServer) -> list[str]:
    return re.findall(
        r"WARNING \S+ nst_server\.api: (40\d \w+ \S+ from [\d.]+: \w+)", server.log_text()
    )


@pytest.mark.parametrize(
    "page_host", ["localhost", FOREIGN_NAME], ids=["other-port", "foreign-site"]
)
def test_a_page_of_another_origin_is_refused_and_no_work_is_done(
    server: LiveServer, page_host: str
) -> None:
    before = len(refusals(server))
    with PageServer(attack_page(server.port)) as page:
        dom = load(f"http://{page_host}:{page.port}/")
    assert "done" in dom, dom[-2000:]  # the page's script ran to its end
    new = refusals(server)[before:]
    # the form post, the no-cors fetch and the one through the foreign Host all arrived...
    assert any("POST /v1/stylize" in r for r in new), new
    assert sum("POST /v1/jobs" in r for r in new) >= 2, new
    assert any(r.endswith("forbidden_host") for r in new), new
    # ...and each was refused before its body was read: 403, never 401 or a job
    assert all(r.startswith("403 ") for r in new), new
    assert " queued: " not in server.log_text(), "a job was queued from a web page"
    status, health = server.get_json("/v1/health")
    assert health["queue"]["queued"] == 0 and health["queue"]["running"] == 0


def test_a_rebinding_page_cannot_read_the_server(server: LiveServer) -> None:
    """The server opened under a foreign name that resolves to this machine (what a page gets
    after DNS rebinding): 403, and not a word of the health body."""
    dom = load(f"http://{FOREIGN_NAME}:{server.port}/v1/health")
    assert "forbidden_host" in dom, dom[-1000:]
    assert "weights" not in dom and "version" not in dom
    assert "403 GET /v1/health" in "\n".join(refusals(server))


def test_no_cors_headers_reach_the_browser(server: LiveServer) -> None:
    status, headers, _ = server.request(
        "OPTIONS",
        "/v1/jobs",
        headers={"Origin": "http://localhost:1", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403
    assert not [name for name in headers if name.lower().startswith("access-control")]
