"""Fixtures for the images/jobs/API layers: apps built on a fast fake engine
(tests/fake_engine.py), whose test clients send the app's token; the test images are in
tests/api/helpers.py.

The fake is for one-layer unit tests only; tests/api/test_server_live.py proves the whole
server on the real engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from nst_server.api import get_queue
from tests.api.helpers import make_test_app
from tests.fake_engine import FakeEngine


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_app(fake_engine: FakeEngine) -> Iterator[Callable[..., object]]:
    """Build apps on a fake engine (``**settings``: ServerSettings fields); their worker
    threads are stopped after the test."""
    apps = []

    def make(engine: FakeEngine | None = None, **settings: object):
        app = make_test_app(engine or fake_engine, **settings)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_queue(app).close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
