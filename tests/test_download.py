"""vitlab's downloader against a local HTTP server: caching, resuming, retries, checks, offline mode."""

import hashlib

import pytest

from local_server import Behaviour, LocalServer
from vitlab.download import DownloadError, cache_root, download

DATA = bytes(range(256)) * 4096  # 1 MiB, every byte value


@pytest.fixture
def server():
    with LocalServer() as s:
        s.served.files["/w.bin"] = DATA
        yield s


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv("VITLAB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def fetch(server, tmp_path, **kw):
    kw.setdefault("backoff", 0)
    kw.setdefault("timeout", 10)
    return download(server.url("/w.bin"), tmp_path / "w.bin", **kw)


def test_download_writes_the_file_and_then_uses_the_cache(server, tmp_path):
    path = fetch(server, tmp_path, sha256=hashlib.sha256(DATA).hexdigest(), size=len(DATA))
    assert path.read_bytes() == DATA
    assert not (tmp_path / "w.bin.part").exists()
    fetch(server, tmp_path)
    assert len(server.requests("/w.bin")) == 1  # the second call never asked the server


def test_a_part_file_is_resumed_with_a_range_request(server, tmp_path):
    (tmp_path / "w.bin.part").write_bytes(DATA[:300_000])
    assert fetch(server, tmp_path).read_bytes() == DATA
    assert server.requests("/w.bin") == [("GET", "/w.bin", "bytes=300000-")]


def test_a_dropped_connection_is_resumed_where_it_stopped(server, tmp_path):
    server.served.behaviours["/w.bin"] = Behaviour(drop_after=400_000, drops=1)
    assert fetch(server, tmp_path).read_bytes() == DATA
    ranges = [r[2] for r in server.requests("/w.bin")]
    assert ranges == [None, "bytes=400000-"]


def test_a_server_that_ignores_range_sends_the_whole_file_again(server, tmp_path):
    server.served.behaviours["/w.bin"] = Behaviour(ignore_range=True)
    (tmp_path / "w.bin.part").write_bytes(b"stale bytes from another file")
    assert fetch(server, tmp_path).read_bytes() == DATA


def test_a_complete_part_is_finished_without_a_new_body(server, tmp_path):
    (tmp_path / "w.bin.part").write_bytes(DATA)
    assert fetch(server, tmp_path, sha256=hashlib.sha256(DATA).hexdigest()).read_bytes() == DATA  # 416 -> whole


def test_a_wrong_checksum_is_refused_and_nothing_is_left(server, tmp_path):
    with pytest.raises(DownloadError, match="checksum mismatch: expected sha256") as e:
        fetch(server, tmp_path, sha256="0" * 64)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()


def test_a_wrong_size_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match=f"received {len(DATA)} bytes, expected 5"):
        fetch(server, tmp_path, size=5)
    assert not (tmp_path / "w.bin").exists()


def test_404_fails_at_once_in_one_line(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as e:
        download(server.url("/missing.npz"), tmp_path / "m.npz", backoff=0)
    assert "\n" not in str(e.value) and len(server.requests("/missing.npz")) == 1
    assert not list(tmp_path.iterdir())


def test_503_is_retried_then_succeeds(server, tmp_path):
    server.served.behaviours["/w.bin"] = Behaviour(fail_with=503, fails=2)
    assert fetch(server, tmp_path).read_bytes() == DATA
    assert len(server.requests("/w.bin")) == 3


def test_retries_are_bounded(server, tmp_path):
    server.served.behaviours["/w.bin"] = Behaviour(fail_with=503, fails=100)
    with pytest.raises(DownloadError, match=r"HTTP 503 .*after 3 tries"):
        fetch(server, tmp_path, retries=2)
    assert len(server.requests("/w.bin")) == 3


def test_offline_mode_uses_the_cache_only(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline") as e:
        fetch(server, tmp_path)
    assert "\n" not in str(e.value) and server.requests() == []
    (tmp_path / "w.bin").write_bytes(b"cached")
    assert fetch(server, tmp_path).read_bytes() == b"cached"
    monkeypatch.delenv("VITLAB_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline"):
        download(server.url("/w.bin"), tmp_path / "other.bin")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("VITLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "vitlab"


def test_data_sets_use_the_same_downloader(server, tmp_path):
    from vitlab.data.download import download as data_download
    from vitlab.data.errors import DataError

    path = data_download(server.url("/w.bin"), tmp_path / "d.bin", md5=hashlib.md5(DATA).hexdigest())
    assert path.read_bytes() == DATA
    with pytest.raises(DataError, match="HTTP 404"):
        data_download(server.url("/nope"), tmp_path / "n.bin")


def test_concurrent_downloads_of_one_file_fetch_it_once(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: fetch(server, tmp_path), range(3)))
    assert all(p.read_bytes() == DATA for p in paths)
    assert len(server.requests("/w.bin")) == 1 and not (tmp_path / "w.bin.part").exists()
