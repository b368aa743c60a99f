"""The plug-in's side of the server token: where it comes from (setting, NST_TOKEN, the token
file recorded by the installer), that the token file never goes to another machine, and what a
401 tells the artist to do. Against the stand-in server (tests/plugin/fake_server.py), which
follows the token contract: without a valid token, health answers only {status, version} and
every other route 401."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "gimp_plugin" / "neural_style"))
sys.path.insert(0, str(HERE))

import fake_server  # noqa: E402
import nst_client  # noqa: E402

TOKEN = "x" * 40
LOCAL = "http://127.0.0.1:8765"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "config" / "neural-style" / "token"
    path.parent.mkdir(parents=True)
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def server() -> Iterator[tuple[str, fake_server.FakeState]]:
    state = fake_server.FakeState(steps=2, token=TOKEN)
    httpd = fake_server.serve(0, state)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()


def test_an_empty_setting_means_the_recorded_token_file(token_file: Path) -> None:
    token = nst_client.resolve_token("", {"token_file": str(token_file)}, LOCAL, environ={})
    assert token.value == TOKEN
    assert str(token_file) in token.source


def test_without_a_record_the_servers_default_place_is_read(token_file: Path) -> None:
    config_home = token_file.parents[1]
    env = {"XDG_CONFIG_HOME": str(config_home)}
    assert nst_client.resolve_token("", {}, LOCAL, environ=env).value == TOKEN
    home = {"HOME": str(config_home.parent)}  # ~/.config/neural-style/token
    (config_home.parent / ".config").symlink_to(config_home)
    assert nst_client.resolve_token("", {}, LOCAL, environ=home).value == TOKEN


def test_nst_token_overrides_the_file_and_a_setting_overrides_both(token_file: Path) -> None:
    config = {"token_file": str(token_file)}
    env = {"NST_TOKEN": " from-env "}
    token = nst_client.resolve_token("", config, LOCAL, environ=env)
    assert (token.value, token.source) == ("from-env", "the NST_TOKEN environment variable")
    token = nst_client.resolve_token(" typed ", config, LOCAL, environ=env)
    assert (token.value, token.source) == ("typed", "the Server token setting")


def test_the_token_file_is_never_sent_to_another_machine(token_file: Path) -> None:
    token = nst_client.resolve_token(
        "", {"token_file": str(token_file)}, "http://192.0.2.7:8765", environ={}
    )
    assert token.value == ""
    assert "only sent to a server on this machine" in token.source
    # A token given on purpose still goes there.
    env = {"NST_TOKEN": "remote-token"}
    remote = nst_client.resolve_token("", {}, "https://192.0.2.7", environ=env)
    assert remote.value == "remote-token"


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "does not exist"), ("", "does not hold a token"), ("two words", "does not hold")],
)
def test_a_missing_or_broken_token_file_says_so(tmp_path: Path, content, why) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    token = nst_client.resolve_token("", {"token_file": str(path)}, LOCAL, environ={})
    assert token.value == "" and why in token.source and str(path) in token.source


def test_a_job_goes_through_with_the_token_file(server, token_file: Path) -> None:
    url, state = server
    config = {"server_url": url, "token_file": str(token_file)}
    client = nst_client.make_client("", "", config, environ={})
    tiny = nst_client.encode_png(nst_client.RawImage(4, 4, 3, 8, bytes(48)))
    assert client.params()["params"]
    png = nst_client.run_job(client, tiny, [tiny], None, poll_interval=0.01)
    assert nst_client.decode_png(png).width == 4
    assert set(state.tokens_seen) == {f"Bearer {TOKEN}"}


def test_health_without_a_token_is_enough_to_find_the_server(server) -> None:
    """ensure_server probes health: a server that answers only {status, version} is up."""
    url, _state = server
    health, process = nst_client.ensure_server(nst_client.NstClient(url), None)
    assert health == {"status": "ok", "version": "fake"} and process is None


def test_a_401_without_a_token_names_what_to_run(server, tmp_path: Path) -> None:
    url, _state = server
    config = {"server_url": url, "token_file": str(tmp_path / "absent")}
    client = nst_client.make_client("", "", config, environ={})
    with pytest.raises(nst_client.ServerError) as info:
        client.params()
    text = str(info.value)
    assert info.value.status == 401
    assert "install/install.sh" in text and "nst-server token --show" in text
    assert f"the token file {tmp_path / 'absent'} does not exist" in text


def test_a_401_with_a_stale_token_names_what_to_run(server, tmp_path: Path) -> None:
    url, _state = server
    stale = tmp_path / "token"
    stale.write_text("y" * 40)  # the server's token was reset since
    client = nst_client.make_client("", "", {"server_url": url, "token_file": str(stale)}, {})
    with pytest.raises(nst_client.ServerError) as info:
        client.params()
    text = str(info.value)
    assert "refused the plug-in's token" in text and str(stale) in text
    assert "install/install.sh" in text and "nst-server token --show" in text
    assert "y" * 40 not in text  # the message never shows the token itself
