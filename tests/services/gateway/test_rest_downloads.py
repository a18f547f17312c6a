"""Downloads of damaged batches fail visibly, end to end: a real uvicorn server on 127.0.0.1 serving the
in-process platform, real files, httpx and the Python client. A file deleted or corrupted between listing
and download never reaches the client as a complete member, the stream is cut (no end-of-archive), and the
client raises BatchIntegrityError instead of yielding a short batch. The client's own checks are tested
against crafted archives too (an "old server" that ends a short tar cleanly, extra, duplicate, swapped)."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from serving_fakes import make_platform
from services.common.findings import Condition
from services.common.store import BatchStore
from services.gateway.rest import create_app
from synthrad.client import BatchIntegrityError, SynthradClient

N = 8
# The REST access middleware is pure ASGI (services/gateway/access.py): an error raised by a streaming body
# reaches uvicorn, which cuts the connection mid-body, so raw HTTP clients see an incomplete read.


@pytest.fixture
def served(tmp_path):
    platform, store, _ = make_platform(tmp_path)
    server = uvicorn.Server(uvicorn.Config(create_app(platform), host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    clients: list[SynthradClient] = []

    def connect() -> SynthradClient:
        # a new connection per download of a damaged batch: while rest.py's BaseHTTPMiddleware completes the
        # failed response (see CUT_BY_SERVER), uvicorn closes that keep-alive connection only afterwards, and
        # the next request on it would fail with "Server disconnected without sending a response"
        clients.append(SynthradClient(f"http://127.0.0.1:{port}", timeout=30))
        return clients[-1]

    try:
        yield connect, store
    finally:
        for c in clients:
            c.close()
        server.should_exit = True
        thread.join(30)


def _batch(store: BatchStore, fmt: str = "png", n: int = N) -> str:
    with store.create("tiny", "0" * 64, "eager", fmt) as w:
        for s in range(n):
            w.add(np.random.default_rng(s).random((48, 48), dtype=np.float32), seed=s, condition=Condition())
    return w.batch_id


def _path(store: BatchStore, bid: str, index: int) -> Path:
    return Path(store.batch_path(bid)) / store.get(bid).images[index].file


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _raw_download(client: SynthradClient, bid: str, archive: str = "tar") -> tuple[bytes, Exception | None]:
    got = bytearray()
    try:
        with client.http.stream("GET", f"/v1/batches/{bid}/download", params={"archive": archive}) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                got += chunk
    except httpx.HTTPError as e:
        return bytes(got), e
    return bytes(got), None


@pytest.mark.parametrize("fmt", ["png", "webdataset"])
def test_intact_batches_download_and_iterate(served, tmp_path, fmt):
    connect, store = served
    client = connect()
    bid = _batch(store, fmt)
    assert [b["batch_id"] for b in client.batches()] == [bid]
    assert len(list(client.iter_arrays(bid))) == N
    for archive in ("tar", "zip"):
        path = client.download(bid, tmp_path / archive, archive=archive)
        assert path.name == f"{bid}.{archive}" and not list(path.parent.glob("*.part"))
    with tarfile.open(tmp_path / "tar" / f"{bid}.tar") as tar:
        names = tar.getnames()
    assert names[-1] == f"{bid}/manifest.json" and len(names) == len(store.get(bid).files) + 1


def test_deleted_file_makes_the_client_raise_not_yield_short(served, tmp_path):
    connect, store = served
    bid = _batch(store)
    assert connect().batch(bid)["count"] == N  # listed and looked up: then a file goes away
    _path(store, bid, 5).unlink()
    seen = []
    with pytest.raises(BatchIntegrityError) as ei:  # refused before the first byte: the file is missing
        for img, rec in connect().iter_arrays(bid):
            seen.append(rec["index"])
    assert seen == [] and ei.value.batch_id == bid
    assert "000005-s5.png" in str(ei.value)
    r = connect().http.get(f"/v1/batches/{bid}/download")
    assert r.status_code == 500 and r.json()["error"] == "batch_damaged" and "000005-s5.png: missing" in r.json()["detail"]
    with pytest.raises(BatchIntegrityError):
        connect().download(bid, tmp_path / "dl")
    assert not any((tmp_path / "dl").iterdir())  # no archive, no .part left behind
    with pytest.raises(BatchIntegrityError):
        connect().download(bid, tmp_path / "dl", archive="zip")
    assert not any((tmp_path / "dl").iterdir())


def test_corrupt_file_never_reaches_the_client_as_a_member(served, tmp_path):
    connect, store = served
    bid = _batch(store)
    bad = _path(store, bid, 3)
    _corrupt(bad)
    body, _ = _raw_download(connect(), bid)
    assert f"{bid}/000002-s2.png".encode() in body and bad.name.encode() not in body  # checked before its header
    with pytest.raises(BatchIntegrityError):
        list(connect().iter_images(bid))
    zbody, _ = _raw_download(connect(), bid, "zip")
    assert b"000002-s2.png" in zbody and bad.name.encode() not in zbody


@pytest.mark.parametrize("archive", ["tar", "zip"])
def test_damaged_download_is_cut_not_completed(served, archive):
    connect, store = served
    bid = _batch(store)
    _corrupt(_path(store, bid, 5))  # present (the pre-check passes), wrong bytes: found while streaming
    body, err = _raw_download(connect(), bid, archive)
    assert isinstance(err, httpx.RemoteProtocolError), f"a complete {len(body)}-byte response, no error"


def test_truncated_shard_refused(served):
    connect, store = served
    bid = _batch(store, "webdataset")
    shard = Path(store.batch_path(bid)) / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(BatchIntegrityError, match="0 of 2 files arrived intact, shard-000000.tar did not"):
        list(connect().iter_arrays(bid))


# ---- the client's own checks, against crafted archives ----------------------------------------------

def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_server(store: BatchStore, bid: str, members: list[tuple[str, bytes]], man: dict | None = None) -> SynthradClient:
    man = man or store.get(bid).model_dump(mode="json")
    body = _tar([(f"{bid}/{n}", d) for n, d in members])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/batches/{bid}":
            return httpx.Response(200, json=man)
        assert request.url.path == f"/v1/batches/{bid}/download"
        return httpx.Response(200, content=body)

    return SynthradClient(http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://synthrad"))


def _files(store: BatchStore, bid: str) -> list[tuple[str, bytes]]:
    return list(store.iter_files(bid))


@pytest.fixture
def store(tmp_path):
    return BatchStore(tmp_path / "store")


def test_client_accepts_a_faithful_archive(store, tmp_path):
    for fmt in ("png", "webdataset"):
        bid = _batch(store, fmt)
        client = _fake_server(store, bid, _files(store, bid))
        assert [r["index"] for _, r in client.iter_arrays(bid)] == list(range(N))
        assert client.download(bid, tmp_path / fmt).exists()


def test_client_refuses_a_short_but_well_ended_tar(store, tmp_path):
    """What the old server sent: 5 of 8 images, then a clean end-of-archive."""
    bid = _batch(store)
    files = _files(store, bid)
    client = _fake_server(store, bid, files[:5])
    with pytest.raises(BatchIntegrityError, match="ended without 000005-s5.png"):
        list(client.iter_arrays(bid))
    with pytest.raises(BatchIntegrityError, match="incomplete"):
        client.download(bid, tmp_path / "dl")
    assert not any((tmp_path / "dl").iterdir())
    client = _fake_server(store, bid, files[:-1])  # every image, no manifest.json
    with pytest.raises(BatchIntegrityError, match="manifest.json"):
        list(client.iter_arrays(bid))


@pytest.mark.parametrize("case", ["swapped", "extra", "twice", "outside", "manifest"])
def test_client_refuses_a_tampered_archive(store, case):
    bid = _batch(store)
    files = _files(store, bid)
    if case == "swapped":
        (a, da), (b, db) = files[0], files[1]
        files[0], files[1] = (a, db), (b, da)
    elif case == "extra":
        files.insert(2, ("notes.txt", b"hello"))
    elif case == "twice":
        files.insert(2, files[1])
    elif case == "outside":
        files.insert(0, ("../evil.png", files[0][1]))
    else:
        doc = json.loads(files[-1][1])
        doc["images"][0]["sha256"] = "0" * 64
        files[-1] = ("manifest.json", json.dumps(doc).encode())
    client = _fake_server(store, bid, files)
    with pytest.raises(BatchIntegrityError) as ei:
        list(client.iter_arrays(bid))
    expect = {"swapped": "sha256 mismatch", "extra": "unexpected", "twice": "twice", "outside": "unexpected",
              "manifest": "differs"}[case]
    assert expect in str(ei.value)


def test_client_checks_webdataset_members(store):
    bid = _batch(store, "webdataset")
    files = _files(store, bid)
    with tarfile.open(fileobj=io.BytesIO(files[0][1])) as shard:
        members = [(m.name, shard.extractfile(m).read()) for m in shard.getmembers() if m.name != "000004.png"]
    man = store.get(bid).model_dump(mode="json")
    man["files"] = {}  # a schema-1 manifest: no shard digest, members checked one by one
    client = _fake_server(store, bid, [("shard-000000.tar", _tar(members)), files[-1]], man)
    with pytest.raises(BatchIntegrityError, match="000004.png: missing"):
        list(client.iter_arrays(bid))
