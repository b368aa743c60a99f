"""The Neural Style window's GTK-free controller (nst_client/controller.py) against the stand-in
server: a queue of runs with progress, ETA, Keep and Cancel; one status request per window at a
time; previews; history; presets; closing with runs pending."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "gimp_plugin" / "neural_style"))
sys.path.insert(0, str(HERE))

import fake_server  # noqa: E402
import nst_client  # noqa: E402
from nst_client import controller as ctl  # noqa: E402

WIDTH, HEIGHT = 40, 30


class Recorder:
    """Collects the controller's events as a window's main loop would receive them."""

    def __init__(self) -> None:
        self.events: list[nst_client.Event] = []
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def __call__(self, event: nst_client.Event) -> None:
        with self.lock:
            self.events.append(event)
            self.threads.add(threading.current_thread().name)

    def of(self, kind: str, run_id: int | None = None) -> list[nst_client.Event]:
        with self.lock:
            return [
                e
                for e in self.events
                if e.kind == kind and (run_id is None or (e.run and e.run.id == run_id))
            ]

    def finished(self, run_id: int) -> nst_client.Event | None:
        found = self.of(ctl.FINISHED, run_id)
        return found[-1] if found else None


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[fake_server.FakeState]:
    state = fake_server.FakeState(steps=4)
    server = fake_server.serve(0, state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def make(fake, tmp_path) -> Iterator[Callable[..., tuple[nst_client.StudioController, Recorder]]]:
    made = []

    def build(**kwargs) -> tuple[nst_client.StudioController, Recorder]:
        recorder = Recorder()
        controller = nst_client.StudioController(
            nst_client.NstClient(fake.url),
            notify=recorder,
            presets=nst_client.PresetStore(tmp_path / "presets"),
            poll_interval=0.01,
            **kwargs,
        )
        made.append(controller)
        return controller, recorder

    yield build
    for controller in made:
        controller.close(cancel_pending=True)
        controller.wait_idle(10)


def request(seed: int = 0, **settings) -> nst_client.RunRequest:
    photo = nst_client.RawImage(WIDTH, HEIGHT, 3, 8, bytes(range(120)) * (WIDTH * HEIGHT // 40))
    png = nst_client.encode_png(photo)
    return nst_client.RunRequest(
        content_png=png,
        content_size=(WIDTH, HEIGHT),
        style_pngs=[png],
        paintings=[nst_client.Painting("Starry Night", layer_id=3)],
        settings={**nst_client.presets.BUILT_IN["Quick draft"], "seed": seed, **settings},
        source_id=2,
        source_name="Photo",
        target=f"photo-{seed}",
    )


# ------------------------------------------------------------------ the queue


def test_queued_runs_go_one_at_a_time_with_one_status_request_at_a_time(fake, make) -> None:
    fake.status_delay = 0.03  # so overlapping status requests would be caught in flight
    controller, events = make()
    ids = [controller.submit(request(seed)) for seed in range(3)]
    assert controller.wait_idle(30)
    for run_id, seed in zip(ids, range(3), strict=True):
        end = events.finished(run_id)
        assert end is not None and end.run.state == ctl.DONE, end
        assert end.run.target == f"photo-{seed}"  # the window's handle comes back
        result = end.result
        assert (result.image.width, result.image.height) == (WIDTH, HEIGHT)
        assert result.layer_name == "Neural Style (Starry Night)"
    assert fake.status_max_active == 1
    # Each run reached the server only after the one before it ended.
    submissions = [i for i, (method, path) in enumerate(fake.requests) if path == "/v1/jobs"]
    assert len(submissions) == 3
    assert [u["params"]["seed"] for u in fake.uploads] == [0, 1, 2]
    polls_between = [
        any(path.startswith("/v1/jobs/") for _, path in fake.requests[a:b])
        for a, b in zip(submissions, submissions[1:], strict=False)
    ]
    assert all(polls_between)


def test_progress_places_and_eta_of_waiting_runs(fake, make) -> None:
    fake.steps = 30
    fake.status_delay = 0.02
    controller, events = make()
    first = controller.submit(request(0))
    assert controller.wait_idle(30)  # one finished run: the typical duration is known
    second, third = controller.submit(request(1)), controller.submit(request(2))
    wait_for(lambda: any(e.run.place == 2 for e in events.of(ctl.CHANGED, third)))
    waiting = [e.run for e in events.of(ctl.CHANGED, third) if e.run.state == ctl.WAITING]
    assert waiting and all(r.eta_s is not None and r.eta_s > 0 for r in waiting)
    assert controller.wait_idle(30)
    running = [e.run for e in events.of(ctl.CHANGED, second) if e.run.state == ctl.RUNNING]
    fractions = [r.fraction for r in running]
    assert fractions == sorted(fractions) and fractions[-1] > 0.5
    assert any("step" in r.text for r in running)
    assert events.finished(first).run.fraction == 1.0


def test_cancel_a_waiting_run_never_sends_it(fake, make) -> None:
    fake.steps = 20
    controller, events = make()
    active = controller.submit(request(0))
    waiting = controller.submit(request(1))
    controller.cancel(waiting)
    assert events.finished(waiting).run.state == ctl.CANCELLED
    assert controller.wait_idle(30)
    assert events.finished(active).run.state == ctl.DONE
    assert [u["params"]["seed"] for u in fake.uploads] == [0]


def test_cancel_the_active_run_cancels_it_on_the_server_and_the_next_goes_on(fake, make) -> None:
    fake.steps = 1000
    controller, events = make()
    active = controller.submit(request(0))
    after = controller.submit(request(1))
    wait_for(lambda: any(e.run.state == ctl.RUNNING for e in events.of(ctl.CHANGED, active)))
    fake.steps = 3  # the next run is short
    controller.cancel(active)
    assert controller.wait_idle(30)
    assert events.finished(active).run.state == ctl.CANCELLED
    assert events.finished(active).result is None
    assert events.finished(after).run.state == ctl.DONE
    assert len(fake.deleted) == 1


def test_keep_ends_the_run_with_the_picture_so_far(fake, make) -> None:
    fake.steps = 1000
    controller, events = make()
    run_id = controller.submit(request(0))
    wait_for(lambda: any(e.run.can_keep for e in events.of(ctl.CHANGED, run_id)))
    controller.keep(run_id)
    assert controller.wait_idle(30)
    end = events.finished(run_id)
    assert end.run.state == ctl.DONE
    assert end.result.facts.finished_early is True
    assert end.result.facts.steps < 1000
    record = nst_client.decode_result_record(end.result.record)
    assert record["finished_early"] is True and record["steps"] == end.result.facts.steps
    assert fake.finished == list(fake.jobs)  # one finish, for the one job


def test_keep_on_a_server_too_old_for_it_says_so_and_the_run_goes_on(fake, make) -> None:
    fake.steps = 60
    fake.has_finish = False
    controller, events = make()
    run_id = controller.submit(request(0))
    wait_for(lambda: any(e.run.can_keep for e in events.of(ctl.CHANGED, run_id)))
    controller.keep(run_id)
    wait_for(lambda: events.of(ctl.MESSAGE, run_id))
    assert "too old" in events.of(ctl.MESSAGE, run_id)[0].message
    assert controller.wait_idle(30)
    end = events.finished(run_id)
    assert end.run.state == ctl.DONE and end.result.facts.finished_early is False


def test_previews_arrive_as_the_run_goes(fake, make) -> None:
    fake.steps = 6
    controller, events = make(preview_size=16)
    run_id = controller.submit(request(0))
    assert controller.wait_idle(30)
    previews = events.of(ctl.PREVIEW, run_id)
    assert len(previews) >= 3
    pictures = [nst_client.decode_png(e.preview_png) for e in previews]
    assert all(max(p.width, p.height) <= 16 for p in pictures)
    assert len({p.pixels for p in pictures}) == len(pictures)  # each a new picture
    asked = [path for _, path in fake.requests if "/preview" in path]
    assert asked and all(path.endswith("?size=16") for path in asked)


def test_a_failing_server_fails_the_run_with_its_message_and_the_queue_goes_on(fake, make):
    fake.fail_with = "out of memory at 4096 px; try a smaller max size"
    controller, events = make()
    first = controller.submit(request(0))
    wait_for(lambda: events.finished(first))
    assert events.finished(first).run.state == ctl.FAILED
    assert "out of memory at 4096 px" in events.finished(first).run.error
    fake.fail_with = None
    second = controller.submit(request(1))
    assert controller.wait_idle(30)
    assert events.finished(second).run.state == ctl.DONE


def test_an_unreachable_server_is_a_readable_failure(make, fake) -> None:
    controller, events = make()
    controller.client = nst_client.NstClient("http://127.0.0.1:9")
    run_id = controller.submit(request(0))
    assert controller.wait_idle(30)
    error = events.finished(run_id).run.error
    assert "Cannot reach the neural style server" in error and "nst-server serve" in error


# ------------------------------------------------------------------ closing


def test_closing_with_runs_pending_asks_and_yes_cancels_them(fake, make) -> None:
    fake.steps = 1000
    controller, events = make()
    assert not controller.close_needs_asking()
    ids = [controller.submit(request(seed)) for seed in range(3)]
    wait_for(lambda: any(e.run.state == ctl.RUNNING for e in events.of(ctl.CHANGED, ids[0])))
    assert controller.close_needs_asking()
    controller.close(cancel_pending=True)
    assert controller.wait_idle(30)
    assert [events.finished(i).run.state for i in ids] == [ctl.CANCELLED] * 3
    wait_for(lambda: events.of(ctl.IDLE))
    assert len(fake.uploads) == 1  # the waiting ones never went up
    with pytest.raises(nst_client.NstError, match="closing"):
        controller.submit(request(9))


def test_closing_and_answering_no_lets_them_finish_and_land(fake, make) -> None:
    controller, events = make()
    ids = [controller.submit(request(seed)) for seed in range(2)]
    controller.close(cancel_pending=False)
    assert controller.wait_idle(30)
    assert [events.finished(i).run.state for i in ids] == [ctl.DONE] * 2
    assert all(events.finished(i).result is not None for i in ids)
    wait_for(lambda: events.of(ctl.IDLE))


# ------------------------------------------------------------------ history and presets


def _layer(layer_id: int, name: str, record: bytes | None) -> tuple:
    return (layer_id, name, list(record) if record else None, f"thumb-{layer_id}")


def test_history_lists_this_images_results_and_restores_them() -> None:
    v2 = nst_client.encode_result_record(
        2,
        "Photo",
        [nst_client.Painting("Starry Night", layer_id=3)],
        {**nst_client.presets.BUILT_IN["Final"], "strength": 80.0, "seed": 11},
        {"seed": 11, "iterations": 300},
        nst_client.ResultFacts(processing_size=768, steps=300, time_s=95.0, engine_version=2),
    )
    v1 = json.dumps(
        {"version": 1, "source_id": 2, "source_name": "Photo", "style": "Scream",
         "params": {"seed": 4, "iterations": 50}}
    ).encode()  # fmt: skip
    layers = [
        _layer(9, "Neural Style (Starry Night) 768 px ×1.3", v2),
        _layer(8, "Sky", None),
        _layer(7, "Neural Style (Scream)", v1),
        _layer(6, "Broken", b"{nope"),
    ]
    history = nst_client.history_from_layers(layers)
    assert [(e.layer_id, e.thumbnail) for e in history] == [(9, "thumb-9"), (7, "thumb-7")]
    assert history[0].facts() == [
        "Starry Night",
        "strength 80",
        "768 px",
        "300 steps",
        "seed 11",
        "1 min 35 s",
        "engine 2",
    ]
    assert history[1].facts() == ["Scream", "seed 4"]  # version 1 recorded no more
    restored = nst_client.StudioController.restore(history[0])
    assert restored["strength"] == 80.0 and restored["quality"] == "final"
    assert restored["seed"] == 11
    again = nst_client.StudioController.again(history[0], random.Random(1))
    assert again["seed"] != 11 and {**again, "seed": 11} == restored
    old = nst_client.StudioController.restore(history[1])
    assert old["iterations"] == 50 and old["seed"] == 4


def test_presets_through_the_controller(make) -> None:
    controller, _events = make()
    presets, problems = controller.presets_list()
    assert [p.name for p in presets] == ["Quick draft", "Final"] and problems == []
    current = {**nst_client.presets.BUILT_IN["Quick draft"], "strength": 90.0}
    controller.save_preset("Loud", current)
    applied = controller.apply_preset("Final", {**current, "server-url": "http://x"})
    assert applied["quality"] == "final" and applied["server-url"] == "http://x"
    assert controller.apply_preset("Loud", {})["strength"] == 90.0
    controller.delete_preset("Loud")
    assert [p.name for p in controller.presets_list()[0]] == ["Quick draft", "Final"]


def test_which_paintings_to_read() -> None:
    pick = nst_client.StudioController.styles_to_send
    assert pick({"style-blend": 0.0}, False, True) == ["style-layer"]
    assert pick({"style-blend": 30.0}, True, True) == ["style-file", "style-layer-2"]
