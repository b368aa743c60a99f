"""Fixtures for the end-to-end tests in real GIMP 3.0 and 3.2 (Debian chroots) against the real
server.

Facts this relies on (../shared/notes/gimp3-headless.md): GIMP 3.0.4 runs headless as
``gimp-console-3.0 -i --batch-interpreter=python-fu-eval -b - --quit`` inside a trixie chroot
with no mounts at all; the chroot shares the host's network, so a server on the host's
127.0.0.1 is reachable from the plug-in; GIMP3_DIRECTORY gives a throwaway profile; stderr is
always noisy, so only our stdout markers and exit codes are asserted on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from gimp_harness import (
    ABANDON_AFTER_S,
    GIMP_RELEASES,
    HERE,
    REPO,
    SHARED_IMAGES,
    GimpRelease,
    GimpSession,
    RealServer,
    nst_client,
    unavailable,
)

from tests.live_server import free_port, serve_command


@pytest.fixture(scope="session", params=GIMP_RELEASES, ids=lambda r: f"gimp{r.version}")
def gimp_release(request: pytest.FixtureRequest) -> GimpRelease:
    """Each GIMP 3 the tests run in (3.0 from Debian 13, 3.2 from testing), its chroot built by
    tests/gimp/build_chroot.sh or reused."""
    release: GimpRelease = request.param
    if os.geteuid() != 0:
        unavailable("needs root (debootstrap and chroot)")
    if not (SHARED_IMAGES / "content" / "tubingen.jpg").is_file():
        unavailable(f"test images not found at {SHARED_IMAGES} (../shared is absent)")
    # A missing debootstrap is installed by build_chroot.sh (root only), so no skip for it.
    build = subprocess.run(
        ["bash", str(HERE / "build_chroot.sh"), "--release", release.debian, str(release.root)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    print(build.stdout, end="")
    if build.returncode != 0:
        pytest.fail(
            f"building the GIMP {release.version} chroot failed:\n{build.stdout}\n{build.stderr}"
        )
    return release


@pytest.fixture(scope="session")
def gimp(gimp_release: GimpRelease) -> Iterator[GimpSession]:
    """A throwaway GIMP profile in the chroot with the plug-in installed by the installer's
    plug-in step, and the test images (scaled down by GIMP itself at test time)."""
    name = f"nst-e2e-{uuid.uuid4().hex[:8]}"
    outside = gimp_release.root / "tmp" / name
    (outside / "profile" / "plug-ins").mkdir(parents=True)
    shutil.copy(SHARED_IMAGES / "content" / "tubingen.jpg", outside / "content.jpg")
    shutil.copy(SHARED_IMAGES / "style" / "starry_night.jpg", outside / "style.jpg")
    shutil.copy(SHARED_IMAGES / "style" / "the_scream.jpg", outside / "style2.jpg")
    # The recorded start command cannot work inside the chroot on purpose: the harness starts
    # the real server itself, and the "unreachable" scenario checks the plug-in's message.
    subprocess.run(
        [
            "bash",
            str(REPO / "install" / "install_plugin.sh"),
            "--plugin-dir",
            str(outside / "profile" / "plug-ins"),
            "--start-command",
            "/nonexistent/nst-server serve",
            # The server's token, as the plug-in finds it (the tests write it there).
            "--token-file",
            f"/tmp/{name}/token",
        ],
        check=True,
        capture_output=True,
    )
    installed = outside / "profile" / "plug-ins" / "neural_style" / "neural_style.py"
    assert installed.is_file() and os.access(installed, os.X_OK)
    try:
        yield GimpSession(gimp_release, f"/tmp/{name}", outside)
    finally:
        shutil.rmtree(outside, ignore_errors=True)


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """The real nst_server (real VGG19 weights) on the host's 127.0.0.1, on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("nst-server") / "server.log"
    command = serve_command(port, log, abandon_after_s=ABANDON_AFTER_S)
    client = nst_client.NstClient(f"http://127.0.0.1:{port}")
    # Its stderr (TensorFlow's start-up chatter) goes to a file: an unread pipe could fill up.
    console = log.with_name("console.txt")
    with console.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    try:
        nst_client.wait_for_health(client, 180, process)
    except nst_client.NstError as exc:
        process.kill()
        pytest.fail(f"the real server did not start: {exc}\n{console.read_text()[-3000:]}")
    try:
        yield RealServer(client.base_url, log, client)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
