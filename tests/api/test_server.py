"""nst_server.settings, .auth, .guard and .server without a network: one settings declaration
and its sources, the token file, the request guard's rules, the private log; OpenAPI and README
coverage."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from pathlib import Path

import pytest

from nst_server.api import get_queue
from nst_server.auth import (
    MIN_TOKEN_LENGTH,
    OWNER,
    Authenticator,
    TokenError,
    check_token,
    ensure_token,
    header_path,
    read_token,
    reset_token,
)
from nst_server.guard import RequestGuard, is_loopback
from nst_server.server import ServerConfigError, authenticator_for, setup_logging
from nst_server.settings import (
    ServerSettings,
    SettingsError,
    default_log_file,
    markdown_table,
    parse_bytes,
)
from tests.api.helpers import TEST_TOKEN, make_test_app

REPO = Path(__file__).resolve().parents[2]
TOKEN = "x" * 40


# --- settings ----------------------------------------------------------------------------------


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    env = {"NST_QUEUE_SIZE": "3", "NST_ABANDON_AFTER_S": "7.5", "NST_IDLE_UNLOAD_S": "60"}
    settings = ServerSettings.load({"queue_size": 5, "idle_unload_s": None}, env)
    assert settings.queue_size == 5  # the flag
    assert settings.abandon_after_s == 7.5 and settings.idle_unload_s == 60.0  # the variables
    assert settings.max_pixels == ServerSettings().max_pixels  # the default
    assert ServerSettings().queue_size == 16


def test_every_setting_has_a_variable_a_flag_a_help_and_a_valid_default() -> None:
    for entry in ServerSettings.describe():
        assert entry["env"] == "NST_" + entry["name"].upper()
        assert entry["flag"].startswith("--") and entry["help"].endswith((".", ")"))
    ServerSettings()  # the defaults pass their own checks


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"NST_QUEUE_SIZE": "0"}, ["--queue-size", "NST_QUEUE_SIZE", "between 1 and 1000"]),
        ({"NST_PORT": "70000"}, ["--port", "between 0 and 65535"]),
        ({"NST_QUEUE_SIZE": "many"}, ["NST_QUEUE_SIZE must be a int"]),
        ({"NST_MEMORY_BUDGET": "lots"}, ["NST_MEMORY_BUDGET", "8G"]),
        ({"NST_MAX_BLOCKING_REQUESTS": "16"}, ["free thread"]),
    ],
)
def test_bad_settings_are_refused_naming_flag_and_variable(env, words) -> None:
    with pytest.raises(SettingsError) as caught:
        ServerSettings.load(None, env)
    for word in words:
        assert word in str(caught.value)


def test_sizes_take_units() -> None:
    assert parse_bytes("8G") == 8 * 2**30 and parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("1000") == 1000
    settings = ServerSettings.load(None, {"NST_MEMORY_BUDGET": "2G"})
    assert settings.memory_budget_bytes() == 2 * 2**30
    assert ServerSettings().memory_budget_bytes() > 2**30  # half the machine's RAM


def test_readme_settings_table_is_the_declaration() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, (
        "README's settings table differs from ServerSettings; paste this:\n" + markdown_table()
    )


def test_serve_has_a_flag_for_every_setting() -> None:
    from nst_server.cli import _build_parser

    parser = _build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # noqa: SLF001
    flags = {opt for action in serve._actions for opt in action.option_strings}  # noqa: SLF001
    for entry in ServerSettings.describe():
        assert entry["flag"] in flags, entry["name"]
    ns = parser.parse_args(["serve", "--queue-size", "4", "--memory-budget", "1G"])
    assert ns.queue_size == 4 and ns.memory_budget == 2**30 and ns.port is None


def test_params_limits_are_the_public_settings(make_app) -> None:
    client = make_app(max_iterations=300, memory_budget=2**30).test_client()
    limits = client.get("/v1/params").get_json()["limits"]
    public = [f.name for f in dataclasses.fields(ServerSettings) if f.metadata["public"]]
    assert sorted(limits) == sorted(public)
    assert limits["max_iterations"] == 300 and limits["memory_budget"] == 2**30


def test_default_log_file_follows_xdg_state_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_log_file() == tmp_path / "neural-style" / "server.log"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_log_file() == Path.home() / ".local/state/neural-style/server.log"


def test_the_log_is_private(tmp_path) -> None:
    path = tmp_path / "sub" / "server.log"
    path.parent.mkdir(mode=0o755)
    path.write_text("from an older version\n")
    path.chmod(0o644)
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging(path)
        logging.getLogger("nst_server.test").info("hello log")
        for handler in root.handlers:
            handler.flush()
        assert "hello log" in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        handler = next(h for h in root.handlers if h not in before)
        handler.doRollover()  # a rotated log and its successor stay private
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.with_name("server.log.1").stat().st_mode) == 0o600
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()


# --- the token ---------------------------------------------------------------------------------


def test_short_or_unsafe_tokens_are_refused_with_a_message() -> None:
    for bad in (" ", "s3cret", "y" * (MIN_TOKEN_LENGTH - 1)):
        with pytest.raises(TokenError, match=f"at least {MIN_TOKEN_LENGTH}"):
            check_token(bad, "a test")
    with pytest.raises(TokenError, match="header"):
        check_token("z" * 40 + "\r\nX-Evil: 1", "a test")
    assert check_token(f"  {TOKEN}\n", "a test") == TOKEN


def test_the_token_file_is_made_private_with_a_header_file(tmp_path) -> None:
    path = tmp_path / "cfg" / "neural-style" / "token"
    token, created = ensure_token(path)
    assert created and len(token) >= MIN_TOKEN_LENGTH
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    header = header_path(path)
    assert header.name == "token.header" and stat.S_IMODE(header.stat().st_mode) == 0o600
    assert header.read_text() == f"Authorization: Bearer {token}\n"
    assert ensure_token(path) == (token, False)  # kept on the next start
    path.chmod(0o644)
    assert read_token(path) == token and stat.S_IMODE(path.stat().st_mode) == 0o600
    new = reset_token(path)
    assert new != token and header.read_text() == f"Authorization: Bearer {new}\n"
    path.write_text("short\n")
    with pytest.raises(TokenError, match="at least 32"):
        read_token(path)


def test_the_server_takes_the_token_or_makes_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    made = authenticator_for(ServerSettings())
    token = (tmp_path / "neural-style" / "token").read_text().strip()
    assert made.identify(f"Bearer {token}") == OWNER
    given = authenticator_for(ServerSettings(token=TOKEN))  # NST_TOKEN / --token win
    assert given.identify(f"Bearer {TOKEN}") == OWNER and given.identify(f"Bearer {token}") is None
    with pytest.raises(ServerConfigError, match="at least 32"):
        authenticator_for(ServerSettings(token="s3cret"))


def test_the_authenticator_follows_the_file_and_compares_in_constant_time(
    tmp_path, monkeypatch
) -> None:
    import nst_server.auth as auth_module

    path = tmp_path / "token"
    old, _ = ensure_token(path)
    auth = Authenticator(path=path)
    calls = []
    real = auth_module.hmac.compare_digest
    monkeypatch.setattr(
        auth_module.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b)
    )
    for header in (None, "", f"Basic {old}", f"Bearer {old}x", "Bearer ", f"bearer {old}"[:-1]):
        assert auth.identify(header) is None, header
    assert auth.identify(f"Bearer {old}") == OWNER
    assert (old.encode(), old.encode()) in calls
    new = reset_token(path)
    assert auth.identify(f"Bearer {old}") is None and auth.identify(f"Bearer {new}") == OWNER


# --- the guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "a.localhost"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.168.1.5", "example.com", "localhost.evil", ""]
)
def test_other_hosts(host: str) -> None:
    assert not is_loopback(host)


def guard_answer(guard: RequestGuard, method: str, path: str, **headers: str):
    named = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    principal, refusal = guard.check(method, path, lambda name: named.get(name.lower()))
    return principal, (refusal.status, refusal.code) if refusal else None


def test_guard_rules() -> None:
    guard = RequestGuard(
        Authenticator(TOKEN), bound_host="127.0.0.1", allowed_hosts=["studio.example"]
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = (OWNER, None)
    assert guard_answer(guard, "GET", "/v1/params", Host="127.0.0.1:8765", **auth) == ok
    assert guard_answer(guard, "GET", "/v1/params", Host="localhost:8765", **auth) == ok
    assert guard_answer(guard, "GET", "/v1/params", Host="studio.example", **auth) == ok
    assert guard_answer(guard, "GET", "/v1/params", **auth) == ok  # HTTP/1.0: no Host
    # DNS rebinding: a page of another name that resolves here
    assert guard_answer(guard, "GET", "/v1/health", Host="evil.example:8765")[1] == (
        403,
        "forbidden_host",
    )
    # other origins, same-site pages on another port included
    for origin in ("http://localhost:9999", "http://evil.example", "null", "file://"):
        answer = guard_answer(guard, "POST", "/v1/jobs", Host="localhost:8765", Origin=origin)
        assert answer[1] == (403, "cross_origin"), origin
    same = guard_answer(
        guard, "POST", "/v1/jobs", Host="localhost:8765", Origin="http://localhost:8765", **auth
    )
    assert same == ok
    for site in ("cross-site", "same-site"):
        answer = guard_answer(guard, "GET", "/v1/health", Host="127.0.0.1", Sec_Fetch_Site=site)
        assert answer[1] == (403, "cross_site")
    assert guard_answer(guard, "GET", "/v1/params", Sec_Fetch_Site="none", **auth) == ok
    # the token: everywhere, except a brief health
    assert guard_answer(guard, "GET", "/v1/params")[1] == (401, "unauthorized")
    assert guard_answer(guard, "POST", "/v1/health")[1] == (401, "unauthorized")
    assert guard_answer(guard, "GET", "/v1/health") == (None, None)


def test_a_server_bound_to_an_address_answers_to_it() -> None:
    guard = RequestGuard(Authenticator(TOKEN), bound_host="192.168.1.5")
    assert guard.host_allowed("192.168.1.5:8765") and not guard.host_allowed("192.168.1.6")
    assert not RequestGuard(Authenticator(TOKEN), bound_host="0.0.0.0").host_allowed("0.0.0.0")


# --- coverage -----------------------------------------------------------------------------------


def test_openapi_describes_every_route(fake_engine) -> None:
    text = (REPO / "nst_server" / "openapi.yaml").read_text()
    app = make_test_app(fake_engine, start_worker=False)
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
        "memory_full",
        "too_busy",
        "not_ready",
        "not_started",
        "job_failed",
        "job_cancelled",
        "no_preview",
        "unauthorized",
        "forbidden_host",
        "cross_origin",
        "cross_site",
    ):
        assert code in text, code


def test_tests_never_touch_the_real_token() -> None:
    from nst_server.auth import default_token_path

    assert len(TEST_TOKEN) >= MIN_TOKEN_LENGTH
    assert "NST_TOKEN" not in os.environ
    real = Path.home() / ".config" / "neural-style" / "token"
    assert default_token_path() != real  # tests/conftest.py moved XDG_CONFIG_HOME
