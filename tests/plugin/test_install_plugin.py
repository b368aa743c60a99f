"""install/install_plugin.sh: every existing GIMP 3.N profile (never a new 3.N but 3.0 when there
is none), the whole plug-in folder, recorded settings kept across re-installs, uninstall."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "install" / "install_plugin.sh"
SOURCE = REPO / "gimp_plugin" / "neural_style"


def run(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True, check=True
    )


def plugin_files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def read(path: Path) -> bytes:
    return path.read_bytes()


def installed_in(folder: Path) -> bool:
    return os.access(folder / "neural_style" / "neural_style.py", os.X_OK)


def test_install_copies_the_whole_folder_records_settings_and_is_idempotent(tmp_path) -> None:
    plugins = tmp_path / "plug-ins"
    out = run(
        "--plugin-dir",
        str(plugins),
        "--start-command",
        "/opt/nst/bin/nst-server serve",
        "--server-url",
        "http://127.0.0.1:9999",
        "--token-file",
        "/home/a/.config/neural-style/token",
        home=tmp_path,
    ).stdout
    folder = plugins / "neural_style"
    assert f"installed {folder}" in out
    # GIMP 3 registers only PLUGINS/<name>/<name>.py with the exec bit.
    assert installed_in(plugins)
    expected = plugin_files(SOURCE)
    assert "nst_client/client.py" in expected and "nst_client/controller.py" in expected
    assert plugin_files(folder) == {**expected, "plugin.json": read(folder / "plugin.json")}
    assert json.loads((folder / "plugin.json").read_text()) == {
        "server_url": "http://127.0.0.1:9999",
        "start_command": "/opt/nst/bin/nst-server serve",
        "token_file": "/home/a/.config/neural-style/token",
    }

    (folder / "stale.py").write_text("left over from an old version")
    (folder / "nst_client.py").write_text("the single-file client of an older version")
    run("--plugin-dir", str(plugins), home=tmp_path)  # no flags: keeps what was recorded
    assert not (folder / "stale.py").exists() and not (folder / "nst_client.py").exists()
    recorded = json.loads((folder / "plugin.json").read_text())
    assert recorded["start_command"] == "/opt/nst/bin/nst-server serve"
    assert recorded["token_file"] == "/home/a/.config/neural-style/token"
    assert plugin_files(folder) == {**expected, "plugin.json": read(folder / "plugin.json")}


def test_an_older_plugin_json_gains_the_token_file(tmp_path) -> None:
    folder = tmp_path / "plug-ins" / "neural_style"
    folder.mkdir(parents=True)
    old = {"server_url": "http://127.0.0.1:8765", "start_command": "nst-server serve"}
    (folder / "plugin.json").write_text(json.dumps(old))
    run("--plugin-dir", str(tmp_path / "plug-ins"), home=tmp_path)
    doc = json.loads((folder / "plugin.json").read_text())
    assert doc == {**old, "token_file": str(tmp_path / ".config/neural-style/token")}
    run("--plugin-dir", str(tmp_path / "plug-ins"), home=tmp_path, XDG_CONFIG_HOME="/x")
    assert json.loads((folder / "plugin.json").read_text()) == doc  # a recorded one is kept


def test_every_existing_gimp_3_profile_gets_it_and_no_new_one_is_made(tmp_path) -> None:
    native = tmp_path / ".config" / "GIMP"
    flatpak = tmp_path / ".var/app/org.gimp.GIMP/config/GIMP"
    for profile in (native / "3.0", native / "3.2", flatpak / "3.2"):
        profile.mkdir(parents=True)
    (native / "2.10").mkdir()  # GIMP 2 cannot run it
    (native / "3.x-backup").mkdir()  # not a profile
    out = run("--start-command", "nst-server serve", home=tmp_path).stdout
    for profile in (native / "3.0", native / "3.2", flatpak / "3.2"):
        assert installed_in(profile / "plug-ins"), profile
        assert f"installed {profile / 'plug-ins' / 'neural_style'}" in out
    assert not (native / "2.10" / "plug-ins").exists()
    assert not (native / "3.x-backup" / "plug-ins").exists()
    assert not (flatpak / "3.0").exists()  # never a profile of a GIMP that has not run

    run("--uninstall", home=tmp_path)
    for profile in (native / "3.0", native / "3.2", flatpak / "3.2"):
        assert not (profile / "plug-ins" / "neural_style").exists()
        assert profile.is_dir()  # the profile itself stays


def test_a_30_profile_alone_is_not_joined_by_a_32_one(tmp_path) -> None:
    """GIMP 3.2 copies the 3.0 profile (plug-ins included) on its first start, but only when
    its own folder is absent: the installer must not create it."""
    native = tmp_path / ".config" / "GIMP"
    (native / "3.0").mkdir(parents=True)
    run(home=tmp_path)
    assert installed_in(native / "3.0" / "plug-ins")
    assert sorted(p.name for p in native.iterdir()) == ["3.0"]


def test_without_any_gimp_3_profile_30_is_created(tmp_path) -> None:
    out = run(home=tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg")).stdout
    assert "no GIMP 3 profile found" in out
    assert installed_in(tmp_path / "xdg" / "GIMP" / "3.0" / "plug-ins")
    assert sorted(p.name for p in (tmp_path / "xdg" / "GIMP").iterdir()) == ["3.0"]


def test_macos_profiles(tmp_path) -> None:
    support = tmp_path / "Library" / "Application Support" / "GIMP"
    (support / "3.2").mkdir(parents=True)
    (tmp_path / ".config" / "GIMP" / "3.0").mkdir(parents=True)  # not where a Mac GIMP looks
    run(home=tmp_path, NST_INSTALL_PLATFORM="Darwin")
    assert installed_in(support / "3.2" / "plug-ins")
    assert not (tmp_path / ".config" / "GIMP" / "3.0" / "plug-ins").exists()
    assert sorted(p.name for p in support.iterdir()) == ["3.2"]


def test_command_with_quotes_survives_json(tmp_path: Path) -> None:
    command = "/opt/my env/bin/nst-server serve --log-file '/tmp/a b.log'"
    run("--plugin-dir", str(tmp_path), "--start-command", command, home=tmp_path)
    doc = json.loads((tmp_path / "neural_style" / "plugin.json").read_text())
    assert doc["start_command"] == command


def test_install_ps1_follows_the_same_rules() -> None:
    """No Windows here to run it: check that install.ps1 says what install_plugin.sh does."""
    text = (REPO / "install" / "install.ps1").read_text()
    assert "-match '^3\\.\\d+$'" in text  # every 3.N profile
    assert "Copy-Item" in text and "-Recurse" in text  # the whole folder
    assert "token_file" in text and "plugin.json" in text
    assert "3.0" in text  # created only when no 3.N profile exists
