"""Helpers of the GIMP end-to-end harness (fixtures are in conftest.py).

A uniquely named module rather than conftest.py, because tests/ has a conftest.py too and
``import conftest`` could pick the wrong one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "gimp_plugin" / "neural_style"))

import nst_client  # noqa: E402

SHARED_IMAGES = Path(os.environ.get("NST_SHARED_IMAGES", REPO.parent / "shared" / "images"))


@dataclass(frozen=True)
class GimpRelease:
    """One GIMP 3 the end-to-end tests run in: a Debian release's chroot and its binary."""

    version: str  # "3.0", "3.2": what the tests expect Gimp.version() to start with
    debian: str  # the release tests/gimp/build_chroot.sh --release builds
    root: Path
    console: str  # the batch binary inside the chroot


GIMP_RELEASES = (
    GimpRelease(
        "3.0",
        "trixie",
        Path(os.environ.get("NST_GIMP_ROOT", "/var/cache/nst-gimp3-root")),
        "gimp-console-3.0",
    ),
    GimpRelease(
        "3.2",
        "forky",
        Path(os.environ.get("NST_GIMP32_ROOT", "/var/cache/nst-gimp32-root")),
        "gimp-console-3.2",
    ),
)
#: Where the lead (and a person) can look at what GIMP made; outside the repository.
EXPORT_DIR = Path(os.environ.get("NST_GIMP_EXPORT_DIR", "/tmp/nst-gimp-e2e"))
#: The server's abandonment time in this test: short, so the "killed plug-in" case is quick.
ABANDON_AFTER_S = 4.0


def unavailable(reason: str) -> None:
    """Skip loudly where the harness cannot run; in CI (CI=true) that is a failure instead."""
    message = f"GIMP end-to-end test NOT RUN: {reason}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    warnings.warn(message, stacklevel=2)
    print(f"\n*** {message} ***", file=sys.stderr)
    pytest.skip(message)


@dataclass
class GimpSession:
    release: GimpRelease
    inside: str  # the session folder as the chroot sees it, e.g. /tmp/nst-e2e-1234
    outside: Path  # the same folder on the host

    @property
    def root(self) -> Path:
        return self.release.root

    def run(
        self, scenarios: str, env: dict[str, str | None], timeout: float = 240
    ) -> tuple[int, dict[str, dict]]:
        """Run tests/gimp/e2e_batch.py in gimp-console; return (exit code, markers by name)."""
        proc = self.start(scenarios, env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"GIMP did not finish within {timeout} s:\n{out}\n{err[-3000:]}")
        return proc.returncode, self.markers(out, err)

    def start(self, scenarios: str, env: dict[str, str | None]) -> subprocess.Popen:
        """GIMP running the scenarios; ``env`` adds variables, or removes them with None."""
        variables = {
            "HOME": "/root",
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "GIMP3_DIRECTORY": f"{self.inside}/profile",
            "NST_E2E_DIR": self.inside,
            "NST_E2E_SCENARIOS": scenarios,
            **env,
        }
        command = [
            "chroot",
            str(self.root),
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in variables.items() if v is not None),
            self.release.console,
            "-i",
            "--batch-interpreter=python-fu-eval",
            "-b",
            "-",
            "--quit",
        ]
        script = (HERE / "e2e_batch.py").open("rb")
        try:
            return subprocess.Popen(
                command, stdin=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        finally:
            script.close()

    @staticmethod
    def markers(out: str, err: str = "") -> dict[str, dict]:
        found = {}
        for line in out.splitlines():
            if line.startswith("NST-E2E "):
                _, name, doc = line.split(" ", 2)
                found[name] = json.loads(doc)
        if "end" not in found:
            print(f"GIMP stdout:\n{out}\nGIMP stderr (tail):\n{err[-3000:]}")
        return found

    def plugin_pids(self) -> list[int]:
        """Pids of this session's plug-in processes (the chroot's processes are the host's)."""
        needle = f"{self.inside}/profile/plug-ins/neural_style/neural_style.py"
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if needle in cmdline:
                    pids.append(int(entry.name))
        return pids


@dataclass
class RealServer:
    url: str
    log: Path
    client: nst_client.NstClient
