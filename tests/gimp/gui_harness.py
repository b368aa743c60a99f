"""The real GIMP (GUI, not gimp-console) under Xvfb in a GIMP 3 chroot, with the plug-in's window
open and scripted: for the window's end-to-end tests, the screenshots and the preview timing.

    session = GuiSession.start(release, profile, server_url, {"Photo": steps})
    session.open_window()                           # GIMP's action search: "Neural Style"
    session.wait_event("signal", name="edit")       # the window's test hook logged it
    session.keys("shift+ctrl+d")                    # the artist, in GIMP's image window
    session.touch("edited")                         # the hook's "wait_file" step goes on
    session.wait_event("closed")                    # the window closed
    session.stop()                                  # GIMP and Xvfb ended by pid, /proc unmounted

GIMP runs tests/gimp/window_batch.py (opens the images with a display each) and stays open;
the window is opened from GIMP's own UI, as an artist would. The plug-in's test hook
(gimp_plugin/neural_style/nst_gimp/script.py) follows the steps given here and logs each run,
preview and end as JSON lines, which the tests read. xdotool presses keys in GIMP's own image
window as the artist would. GIMP 3.2's GUI needs /proc in the chroot (its icon
loader's sandbox): mounted for the session only when it is not already, and unmounted after.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gimp_harness import HERE, REPO, SHARED_IMAGES, GimpRelease

#: The GUI binary in each chroot (gimp_harness.GimpRelease.console is the batch one).
GUI_BINARIES = {"3.0": "gimp-3.0", "3.2": "gimp-3.2"}
START_TIMEOUT_S = 120.0


def install_plugin(plugin_dir: Path, token_file_inside: str) -> None:
    subprocess.run(
        [
            "bash",
            str(REPO / "install" / "install_plugin.sh"),
            "--plugin-dir",
            str(plugin_dir),
            "--start-command",
            "/nonexistent/nst-server serve",
            "--token-file",
            token_file_inside,
        ],
        check=True,
        capture_output=True,
    )


def make_profile(release: GimpRelease, token: str) -> tuple[Path, str]:
    """A throwaway GIMP profile in the chroot with the plug-in installed and the server's token
    where plugin.json says: (folder outside, the same inside). Reused by the sessions of a test
    run (GIMP's first start on a new profile is the slow one)."""
    name = f"nst-gui-{uuid.uuid4().hex[:8]}"
    outside = release.root / "tmp" / name
    (outside / "profile" / "plug-ins").mkdir(parents=True)
    (outside / "token").write_text(token)
    install_plugin(outside / "profile" / "plug-ins", f"/tmp/{name}/token")
    return outside, f"/tmp/{name}"


def _descendants(pid: int) -> list[int]:
    """Pids of the processes below ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _free_display(root: Path) -> int:
    for _ in range(200):
        number = random.randint(80, 299)
        if not (root / "tmp" / f".X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number")


@dataclass
class GuiSession:
    release: GimpRelease
    inside: str  # the session's folder as the chroot sees it
    outside: Path
    display: int
    xvfb: subprocess.Popen
    gimp: subprocess.Popen
    mounted_proc: bool
    logs: dict[str, Path] = field(default_factory=dict)  # photo layer name -> its window's log

    # -- start and stop ----------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        release: GimpRelease,
        profile: tuple[Path, str],
        server_url: str,
        windows: dict[str, list[dict]],
        *,
        images: int = 1,
        size: int = 128,
        stale_preview: bool = False,
        screen: tuple[int, int] = (1400, 1000),
    ) -> GuiSession:
        """GIMP with the window open on the first image; ``windows``: the hook's steps for the
        window on each photo layer ("Photo", "Photo 2")."""
        root = release.root
        name = f"nst-gui-session-{uuid.uuid4().hex[:8]}"
        outside = root / "tmp" / name
        (outside / "tmp").mkdir(parents=True)
        inside = f"/tmp/{name}"
        shutil.copy(SHARED_IMAGES / "content" / "tubingen.jpg", outside / "content.jpg")
        shutil.copy(SHARED_IMAGES / "style" / "starry_night.jpg", outside / "style.jpg")
        logs = {photo: outside / f"window-{i}.jsonl" for i, photo in enumerate(windows)}
        # An interactive run starts from GIMP's last-used values (an earlier session's server
        # and painting too): each window is pointed at this session's first.
        first = {"set": {"server-url": server_url, "style-layer": "Starry Night"}}
        script = {
            "windows": {
                photo: {"log": f"{inside}/{logs[photo].name}", "steps": [first, *steps]}
                for photo, steps in windows.items()
            }
        }
        (outside / "script.json").write_text(json.dumps(script))
        display = _free_display(root)
        mounted = False
        if release.version != "3.0" and not os.path.ismount(root / "proc"):
            subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
            mounted = True
        env = {
            "HOME": "/root",
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "DISPLAY": f":{display}",
            "GIMP3_DIRECTORY": f"{profile[1]}/profile",
            "NST_E2E_DIR": inside,
            "TMPDIR": f"{inside}/tmp",  # GIMP's own temporary files go with the session
            "NST_E2E_SIZE": str(size),
            "NST_WINDOW_IMAGES": str(images),
            "NST_WINDOW_STALE_PREVIEW": "1" if stale_preview else "",
            "NST_WINDOW_SCRIPT": f"{inside}/script.json",
        }
        prefix = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]
        # chroot and env exec, so these pids are Xvfb's and GIMP's own: ended by pid in stop().
        xvfb = subprocess.Popen(
            [
                *prefix,
                "Xvfb",
                f":{display}",
                "-screen",
                "0",
                f"{screen[0]}x{screen[1]}x24",
                "-nolisten",
                "tcp",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        session = cls(release, inside, outside, display, xvfb, None, mounted, logs)  # type: ignore[arg-type]
        try:
            session._wait(lambda: (root / "tmp" / ".X11-unix" / f"X{display}").exists(), 30, "Xvfb")
            with (
                open(HERE / "window_batch.py", "rb") as batch,
                open(outside / "gimp.out", "wb") as out,
            ):
                session.gimp = subprocess.Popen(
                    [
                        *prefix,
                        GUI_BINARIES[release.version],
                        "--no-splash",
                        "--batch-interpreter=python-fu-eval",
                        "-b",
                        "-",
                    ],
                    stdin=batch,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        except BaseException:
            session.stop()
            raise
        return session

    def stop(self) -> None:
        # GIMP's plug-ins (ours, Script-Fu, icon loaders) are its children: ended too, by pid,
        # so nothing is left running in the chroot and /proc can be unmounted.
        children = _descendants(self.gimp.pid) if self.gimp is not None else []
        for process in (self.gimp, self.xvfb):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        root = self.release.root
        if self.mounted_proc:
            for _ in range(40):  # a child may take a moment to go
                done = subprocess.run(
                    ["umount", str(root / "proc")], capture_output=True, check=False
                )
                if done.returncode == 0:
                    break
                time.sleep(0.25)
            else:
                raise RuntimeError(f"could not unmount {root / 'proc'}: unmount it by hand")
            self.mounted_proc = False
        for leftover in (
            root / "tmp" / f".X{self.display}-lock",
            root / "tmp" / ".X11-unix" / f"X{self.display}",
        ):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(self.outside, ignore_errors=True)

    # -- what happened -----------------------------------------------------------------------

    def gimp_output(self) -> str:
        try:
            return (self.outside / "gimp.out").read_text(errors="replace")
        except OSError:
            return ""

    def batch_markers(self) -> dict[str, dict]:
        found = {}
        for line in self.gimp_output().splitlines():
            if line.startswith("NST-WIN "):
                _, name, doc = line.split(" ", 2)
                found[name] = json.loads(doc)
        return found

    def events(self, photo: str = "Photo") -> list[dict]:
        try:
            text = self.logs[photo].read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _wait(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            found = condition()
            if found:
                return found
            if self.gimp is not None and self.gimp.poll() is not None:
                raise AssertionError(f"GIMP exited while waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}:\n{self.tail()}"
                )
            time.sleep(0.1)

    def tail(self) -> str:
        logs = "\n".join(
            f"--- window log {photo}:\n"
            + "\n".join(json.dumps(e)[:300] for e in self.events(photo)[-12:])
            for photo in self.logs
        )
        return f"--- GIMP output (tail):\n{self.gimp_output()[-3000:]}\n{logs}"

    def wait_event(
        self, event: str, photo: str = "Photo", timeout: float = START_TIMEOUT_S, **match
    ) -> dict:
        def found():
            for line in self.events(photo):
                if line["event"] == event and all(line.get(k) == v for k, v in match.items()):
                    return line
            return None

        return self._wait(found, timeout, f"{event} {match} in the {photo} window's log")

    def open_window(self, image: int | None = None, photo: str = "Photo") -> None:
        """Filters > Artistic > Neural Style... on the active image (``image``: first switch to
        GIMP's n-th image, Alt+n), found with GIMP's action search as an artist might."""
        self._wait(lambda: self.batch_markers().get("displayed"), START_TIMEOUT_S, "the images")
        if image is not None:
            self.keys(f"alt+{image}")
        self.keys("slash", pause=1.0)
        search = self.window("^Search Actions$")  # no window manager: focus it by hand
        self.x("xdotool", "windowfocus", search)
        self.x("xdotool", "type", "--delay", "50", "Neural Style")
        time.sleep(1.5)
        self.x("xdotool", "key", "Return")
        self.wait_event("script", photo=photo, timeout=60)

    def touch(self, name: str) -> None:
        (self.outside / name).touch()

    # -- X -----------------------------------------------------------------------------------

    def x(self, *args: str, check: bool = True) -> str:
        """A command on the session's display, inside the chroot (xdotool, import)."""
        done = subprocess.run(
            [
                "chroot",
                str(self.release.root),
                "/usr/bin/env",
                "-i",
                "PATH=/usr/bin:/bin",
                f"DISPLAY=:{self.display}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{args} failed: {done.stderr}")
        return done.stdout

    def window(self, pattern: str) -> str:
        """The id of the first visible window whose title matches ``pattern`` (a regex)."""

        def found():
            out = self.x("xdotool", "search", "--onlyvisible", "--name", pattern, check=False)
            return out.split()[0] if out.split() else None

        return self._wait(found, 60, f"a window named {pattern!r}")

    def image_window(self) -> str:
        return self.window(r"GIMP$")

    def title(self, window: str) -> str:
        return self.x("xdotool", "getwindowname", window).strip()

    def keys(self, *keys: str, pause: float = 0.6) -> None:
        """Key presses in GIMP's image window, as the artist's (each waits ``pause`` for GIMP)."""
        window = self.image_window()
        for key in keys:
            self.x("xdotool", "windowfocus", window)
            self.x("xdotool", "key", "--clearmodifiers", key)
            time.sleep(pause)

    def place(
        self, window: str, x: int, y: int, width: int | None = None, height: int | None = None
    ) -> None:
        if width and height:
            self.x("xdotool", "windowsize", window, str(width), str(height))
        self.x("xdotool", "windowmove", window, str(x), str(y))

    def screenshot(self, path: Path, window: str = "root") -> Path:
        self.x("import", "-window", window, f"{self.inside}/shot.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.outside / "shot.png", path)
        return path
