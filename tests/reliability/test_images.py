"""Hostile and unusual images through the API (fake engine; the live module repeats the bombs
on the real server and measures its memory): a 4xx JSON error naming the upload, or a correct
conversion with a result of the content's size; the server keeps serving either way."""

from __future__ import annotations

import io
import resource

import pytest
from PIL import Image

from nst_server.api import get_queue
from tests.api.helpers import make_test_app, serving_client
from tests.fake_engine import FakeEngine
from tests.reliability.helpers import gradient, painting, png
from tests.reliability.hostile import H, W, bomb_png, hostile_images

CASES = hostile_images()


@pytest.fixture(scope="module")
def client():
    app = make_test_app(FakeEngine(), abandon_after_s=0)
    yield serving_client(app)
    get_queue(app).close()


def stylize(client, content: bytes, style: bytes, mask: bytes | None = None):
    data = {
        "content": (io.BytesIO(content), "content.bin"),
        "style": (io.BytesIO(style), "style.bin"),
        "params": '{"iterations": 1, "max_size": 64}',
    }
    if mask is not None:
        data["mask"] = (io.BytesIO(mask), "mask.bin")
    return client.post("/v1/stylize", data=data, content_type="multipart/form-data")


@pytest.mark.parametrize("field", ["content", "style", "mask"])
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_image(client, name: str, field: str) -> None:
    data, (expected, detail) = CASES[name]
    content = data if field == "content" else png(gradient(W, H))
    style = data if field == "style" else painting(48)
    mask = data if field == "mask" else None
    response = stylize(client, content, style, mask)
    size = (64, 64) if name.startswith("zlib bomb") else (W, H)
    if expected == "ok" and field == "mask" and size != (W, H):
        expected, detail = 400, "bad_image"  # decoded fine, but not the content's size
    if expected == "ok":
        assert response.status_code == 200, response.get_data(as_text=True)
        with Image.open(io.BytesIO(response.data)) as result:
            assert result.size == (size if field == "content" else (W, H))
            if field == "content":
                assert result.mode == detail  # alpha kept exactly when the upload had alpha
    else:
        assert response.status_code == expected, response.get_data(as_text=True)
        body = response.get_json()
        assert body["error"]["code"] == detail
        assert body["error"]["message"].startswith(f"{field}:"), body  # names the upload
    assert client.get("/v1/health").get_json()["status"] == "ok"


def test_a_bomb_costs_no_memory_in_process() -> None:
    """Decoding refuses on the declared size: the process' peak RSS does not move by the
    gigabytes the bomb would need (20000 x 20000 RGB float32 = 4.8 GB)."""
    from nst_server.images import ImageTooLarge, decode_image

    data = bomb_png(30_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20):
        with pytest.raises(ImageTooLarge):
            decode_image(data, what="content", max_pixels=40_000_000)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 50_000, f"peak RSS grew by {grown_kb} KiB"
