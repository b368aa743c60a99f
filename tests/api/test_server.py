"""nst_server.server: bind-address rule, config mapping, logging; OpenAPI coverage."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nst_server.api import create_app, get_queue
from nst_server.server import (
    ServerConfig,
    ServerConfigError,
    app_config,
    check_config,
    default_log_file,
    is_loopback,
    setup_logging,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_config(ServerConfig(host=host))  # no token needed


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com", ""])
def test_other_hosts_need_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ServerConfigError, match=r"without a token.*--token.*NST_TOKEN"):
        check_config(ServerConfig(host=host))
    check_config(ServerConfig(host=host, token="long-random-token"))


def test_bad_numbers_are_refused() -> None:
    with pytest.raises(ServerConfigError, match="port"):
        check_config(ServerConfig(port=70000))
    with pytest.raises(ServerConfigError, match="queue size"):
        check_config(ServerConfig(queue_size=0))


def test_app_config_passes_only_given_limits(tmp_path) -> None:
    cfg = app_config(
        ServerConfig(token="t", queue_size=3, abandon_after_s=2, max_pixels=1000),
        tmp_path / "s.log",
    )
    assert cfg["TOKEN"] == "t" and cfg["QUEUE_SIZE"] == 3 and cfg["ABANDON_AFTER_S"] == 2
    assert cfg["MAX_PIXELS"] == 1000 and cfg["LOG_FILE"] == str(tmp_path / "s.log")
    assert "MAX_CONTENT_LENGTH" not in cfg  # left to the app default / NST_MAX_CONTENT_LENGTH


def test_default_log_file_follows_xdg_state_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_log_file() == tmp_path / "neural-style" / "server.log"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_log_file() == Path.home() / ".local/state/neural-style/server.log"


def test_setup_logging_writes_to_the_file(tmp_path) -> None:
    path = tmp_path / "sub" / "server.log"
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging(path)
        logging.getLogger("nst_server.test").info("hello log")
        for handler in root.handlers:
            handler.flush()
        assert "hello log" in path.read_text()
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()


def test_cli_refuses_a_public_address_without_a_token(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NST_TOKEN": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nst_server",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "1",
            "--log-file",
            str(tmp_path / "s.log"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0
    assert "without a token" in result.stderr and "--token" in result.stderr


def test_openapi_describes_every_route(fake_engine) -> None:
    text = (REPO / "nst_server" / "openapi.yaml").read_text()
    app = create_app({"ENGINE": fake_engine, "START_WORKER": False})
    try:
        for rule in app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{id}", rule.rule)
            assert f"  {path}:" in text, path
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                block = text.split(f"  {path}:", 1)[1].split("\n  /", 1)[0]
                assert f"    {method.lower()}:" in block, (path, method)
    finally:
        get_queue(app).close()
    for code in (
        "not_found",
        "bad_params",
        "bad_image",
        "too_large",
        "queue_full",
        "not_ready",
        "job_failed",
        "job_cancelled",
        "no_preview",
        "unauthorized",
    ):
        assert code in text, code
