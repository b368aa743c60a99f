"""install/install_plugin.sh: layout GIMP 3 needs, recorded settings, idempotence, uninstall."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "install" / "install_plugin.sh"


def run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=True
    )


def test_install_records_settings_and_is_idempotent(tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    run(
        "--plugin-dir",
        str(plugins),
        "--start-command",
        "/opt/nst/bin/nst-server serve",
        "--server-url",
        "http://127.0.0.1:9999",
        home=tmp_path,
    )
    folder = plugins / "neural_style"
    # GIMP 3 registers only PLUGINS/<name>/<name>.py with the exec bit.
    assert os.access(folder / "neural_style.py", os.X_OK)
    assert (folder / "nst_client.py").is_file()
    assert json.loads((folder / "plugin.json").read_text()) == {
        "server_url": "http://127.0.0.1:9999",
        "start_command": "/opt/nst/bin/nst-server serve",
    }

    (folder / "stale.py").write_text("left over from an old version")
    run("--plugin-dir", str(plugins), home=tmp_path)  # no flags: keeps what was recorded
    assert not (folder / "stale.py").exists()
    assert json.loads((folder / "plugin.json").read_text())["start_command"] == (
        "/opt/nst/bin/nst-server serve"
    )
    assert (folder / "neural_style.py").read_bytes() == (
        REPO / "gimp_plugin" / "neural_style" / "neural_style.py"
    ).read_bytes()


def test_default_dirs_include_flatpak_profile_when_present(tmp_path: Path) -> None:
    flatpak = tmp_path / ".var/app/org.gimp.GIMP/config/GIMP/3.0"
    flatpak.mkdir(parents=True)
    run("--start-command", "nst-server serve", home=tmp_path)
    for base in (tmp_path / ".config/GIMP/3.0/plug-ins", flatpak / "plug-ins"):
        assert os.access(base / "neural_style" / "neural_style.py", os.X_OK)

    run("--uninstall", home=tmp_path)
    assert not (tmp_path / ".config/GIMP/3.0/plug-ins/neural_style").exists()
    assert not (flatpak / "plug-ins" / "neural_style").exists()


def test_command_with_quotes_survives_json(tmp_path: Path) -> None:
    command = "/opt/my env/bin/nst-server serve --log-file '/tmp/a b.log'"
    run("--plugin-dir", str(tmp_path), "--start-command", command, home=tmp_path)
    doc = json.loads((tmp_path / "neural_style" / "plugin.json").read_text())
    assert doc["start_command"] == command
