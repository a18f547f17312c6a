"""The streaming training dataset: mix, labels, determinism, resumption, retries on 429/503 and dropped
connections, backpressure, DataLoader workers — against the gateway app (in-process, and on a real HTTP server
that sheds load and drops connections)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from live_server import live_server
from serving_fakes import make_platform
from services.gateway.rest import create_app
from synthrad.client import SynthradError
from synthrad.stream import GenerationStream, StreamingDataset

MIX = {"pleural effusion": 0.5, "no pleural effusion": 0.5}
PRESENT, ABSENT = (2, 2, 1, 2), (2, 2, 0, 2)


@pytest.fixture
def app(tmp_path):
    platform, _, _ = make_platform(tmp_path)
    return create_app(platform)


def _local(app):
    return lambda: TestClient(app, base_url="http://localhost")


def test_the_mix_labels_seeds_and_pixels(app):
    s = GenerationStream("http://unused", MIX, chunk=4, seed=10, max_images=22, http_factory=_local(app))
    got = list(s)
    assert [x.seed for x in got] == list(range(10, 32))  # 22 images: the last chunk is short on purpose
    assert [x.codes for x in got[::4]] == [PRESENT, ABSENT] * 3  # chunks alternate: 50 % / 50 %
    assert sum(x.codes == PRESENT for x in got) == 12 and got[0].image.shape == (32, 32)
    again = list(GenerationStream("http://unused", MIX, chunk=4, seed=10, max_images=22, http_factory=_local(app)))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, again))  # deterministic
    data = StreamingDataset("http://unused", {"cardiomegaly": 3, "no finding": 1}, chunk=2, max_images=16,
                            http_factory=_local(app))
    images, codes = next(iter(torch.utils.data.DataLoader(data, batch_size=16)))
    assert images.shape == (16, 1, 32, 32) and images.dtype == torch.float32
    assert (codes[:, 3] == 1).sum() == 12 and (codes == 0).all(dim=1).sum() == 4  # 75 % / 25 %


def test_a_restarted_job_resumes_the_same_stream(app):
    first = StreamingDataset("http://unused", MIX, chunk=4, max_images=40, http_factory=_local(app))
    it = iter(first)
    seen = [next(it) for _ in range(10)]  # two whole chunks and half of the third
    state = first.state_dict()
    assert (state["next_chunk"], state["skip"]) == (2, 2)
    later = StreamingDataset("http://unused", MIX, chunk=4, max_images=40, http_factory=_local(app))
    later.load_state_dict(state)
    rest = list(later)
    assert len(seen) + len(rest) == 40
    whole = list(StreamingDataset("http://unused", MIX, chunk=4, max_images=40, http_factory=_local(app)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(seen + rest, whole))
    other = StreamingDataset("http://unused", MIX, chunk=8, max_images=40, http_factory=_local(app))
    with pytest.raises(ValueError, match="another chunk"):
        other.load_state_dict(state)


class Faulty:
    """ASGI wrapper: the n-th POST /v1/generate gets 503, a dropped connection, or 429, as scripted."""

    def __init__(self, app, script):
        self.app, self.script, self.calls, self.lock = app, list(script), 0, threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/generate":
            with self.lock:
                self.calls += 1
                fault = self.script.pop(0) if self.script else None
            if fault in (503, 429):
                body = b'{"error": "unavailable", "detail": "busy"}'
                await send({"type": "http.response.start", "status": fault,
                            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"2"),
                                        (b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body})
            if fault == "drop":  # the reply starts, then the connection is cut
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/x-npz"), (b"content-length", b"100000")]})
                await send({"type": "http.response.body", "body": b"PK\x03\x04", "more_body": True})
                raise RuntimeError("connection lost")
        return await self.app(scope, receive, send)


def test_shed_load_and_dropped_connections_are_retried_without_loss(app):
    faulty = Faulty(app, [503, "drop", 429, None, "drop"])
    waits = []
    with live_server(faulty) as url:
        s = GenerationStream(url, MIX, chunk=4, max_images=16, sleep=waits.append)
        got = list(s)
    assert [x.seed for x in got] == list(range(16))  # every image once, in order
    assert s.retries == 4 and faulty.calls == 8
    assert waits == [2.0, 1.0, 2.0, 0.5]  # Retry-After when sent, else doubling back-off (reset per chunk)


def test_errors_that_retrying_cannot_fix_stop_the_stream(app):
    s = GenerationStream("http://unused", MIX, model="no-such-model", chunk=2, max_images=4, http_factory=_local(app))
    with pytest.raises(SynthradError, match="422"):
        list(s)
    waits = []
    with live_server(Faulty(app, [503] * 10)) as url:
        s = GenerationStream(url, MIX, chunk=2, max_images=4, max_retries=3, sleep=waits.append)
        with pytest.raises(SynthradError, match="gave up after 3 retries"):
            list(s)
    assert len(waits) == 3
    with pytest.raises(ValueError, match="positive"):
        GenerationStream("http://x", {"pleural effusion": 0})


def test_backpressure_keeps_only_prefetch_chunks_ahead(app):
    counter = Faulty(app, [])
    with live_server(counter) as url:
        it = iter(GenerationStream(url, MIX, chunk=2, prefetch=1))  # an endless stream
        next(it)
        deadline = time.time() + 20
        while counter.calls < 3 and time.time() < deadline:  # chunk 0 taken, 1 queued, 2 fetched and waiting
            time.sleep(0.05)
        time.sleep(0.5)
        assert counter.calls == 3  # and no more while the consumer waits
        it.close()


def test_dataloader_workers_share_the_chunks(app):
    with live_server(app) as url:
        data = StreamingDataset(url, MIX, chunk=3, max_images=30)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
        codes = [c.tolist() for _, c in loader]
    assert len(codes) == 30 and sum(c == list(PRESENT) for c in codes) == 15


def test_the_example_trains_and_resumes_from_its_checkpoint(app, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "train_on_stream", Path(__file__).resolve().parents[2] / "examples" / "train_on_stream.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    state = tmp_path / "state.pt"
    with live_server(app) as url:
        args = ["--url", url, "--batch-size", "8", "--chunk", "4", "--eval-every", "3", "--eval-images", "16",
                "--state", str(state)]
        first = example.main(args + ["--steps", "3"])
        assert first["steps"] == 3 and state.exists() and first["stream"]["next_chunk"] == 6
        second = example.main(args + ["--steps", "6"])  # continues: steps 4-6, the stream after chunk 5
    assert second["steps"] == 6 and second["stream"]["next_chunk"] == 12
    assert 0.0 <= second["history"][-1]["held_out_accuracy"] <= 1.0


def test_the_client_hands_out_a_stream_of_its_server(app):
    from synthrad.client import SynthradClient

    with live_server(app) as url:
        data = SynthradClient(url, api_key="k-123").stream_dataset(MIX, chunk=2, max_images=4)
        assert data.stream.url == url and data.stream.api_key == "k-123"
        assert len(list(data)) == 4
