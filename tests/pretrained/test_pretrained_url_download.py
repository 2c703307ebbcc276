"""URL downloads against a real HTTP server on 127.0.0.1 (and 3.3's mocked-urllib style)."""

import hashlib
import http.server
import io
import os
import threading
import time
import warnings
from unittest import mock

import pytest

from open_clip import pretrained
from open_clip.pretrained import download_pretrained_from_url
from open_clip.pretrained_cache import CorruptCacheError

PAYLOAD = os.urandom(100_000)  # several 8 KiB chunks
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves ``files[path]``; can cut the body after ``drop_after`` bytes and honour ``Range``."""

    def __init__(self):
        self.files = {}
        self.requests = []  # (path, Range header)
        self.drop_after = None
        self.support_range = True
        self.send_length = True
        self.chunk_delay = 0.0  # seconds between 10 kB chunks, to make downloads overlap
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[self.path], 0
                if rng and server.support_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                if server.send_length:
                    self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.drop_after is not None:
                    part = part[: server.drop_after]
                for i in range(0, len(part), 10_000):
                    self.wfile.write(part[i : i + 10_000])
                    time.sleep(server.chunk_delay)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path, body):
        self.files[path] = body
        return self.base + path


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _openai_url(server, body=PAYLOAD, digest=DIGEST):
    return server.add(f"/openaipublic/clip/models/{digest}/RN50.pt", body)


def test_good_file_downloaded_once_then_served_from_cache(server, tmp_path):
    url = _openai_url(server)
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert path == str(tmp_path / "RN50.pt")
    assert open(path, "rb").read() == PAYLOAD
    assert download_pretrained_from_url(url, cache_dir=str(tmp_path)) == path
    assert len(server.requests) == 1
    assert os.listdir(tmp_path) == ["RN50.pt"]  # no temp file left behind


def test_mlfoundations_digest_prefix(server, tmp_path):
    url = server.add(f"/mlfoundations/open_clip/rn50-quickgelu-yfcc15m-{DIGEST[:8]}.pt", PAYLOAD)
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD


def test_wrong_digest_raises_33_message_and_deletes_the_file(server, tmp_path):
    url = _openai_url(server, digest="0" * 64)
    with pytest.raises(RuntimeError, match="checksum does not not match"):
        download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_url_without_digest_is_not_checked(server, tmp_path):
    url = server.add("/elsewhere/weights.bin", b"anything")
    assert open(download_pretrained_from_url(url, cache_dir=str(tmp_path)), "rb").read() == b"anything"


def test_corrupt_cache_warns_and_redownloads(server, tmp_path):
    url = _openai_url(server)
    (tmp_path / "RN50.pt").write_bytes(b"corrupted")
    with pytest.warns(UserWarning, match="SHA256 checksum does not match; re-downloading"):
        path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD
    assert len(server.requests) == 1


def test_target_that_is_not_a_file(server, tmp_path):
    url = _openai_url(server)
    (tmp_path / "RN50.pt").mkdir()
    with pytest.raises(RuntimeError, match="exists and is not a regular file"):
        download_pretrained_from_url(url, cache_dir=str(tmp_path))


def test_dropped_connection_leaves_no_valid_looking_file_and_resumes(server, tmp_path):
    url = _openai_url(server)
    server.drop_after = 40_000
    with pytest.raises(ConnectionError, match="next call resumes"):
        download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert not (tmp_path / "RN50.pt").exists()
    assert (tmp_path / "RN50.pt.part").stat().st_size == 40_000

    server.drop_after = None
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD
    assert server.requests[-1] == (url[len(server.base) :], "bytes=40000-")
    assert os.listdir(tmp_path) == ["RN50.pt"]


def test_resume_falls_back_to_full_download_without_range_support(server, tmp_path):
    url = _openai_url(server)
    (tmp_path / "RN50.pt.part").write_bytes(b"garbage prefix that is not the file")
    server.support_range = False
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD


def test_resumed_file_failing_the_digest_is_fetched_again(server, tmp_path):
    url = _openai_url(server)
    (tmp_path / "RN50.pt.part").write_bytes(b"not the start of the file")
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD
    assert [rng for _, rng in server.requests] == ["bytes=25-", None]
    assert os.listdir(tmp_path) == ["RN50.pt"]


def test_partial_file_is_not_resumed_without_a_digest(server, tmp_path):
    url = server.add("/elsewhere/weights.bin", PAYLOAD)
    (tmp_path / "weights.bin.part").write_bytes(b"stale prefix")
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD
    assert [rng for _, rng in server.requests] == [None]


def test_stale_complete_part_file_is_replaced(server, tmp_path):
    url = _openai_url(server)
    (tmp_path / "RN50.pt.part").write_bytes(b"x" * (len(PAYLOAD) + 5))  # server answers 416
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD


def test_missing_content_length_is_fine(server, tmp_path):
    url = _openai_url(server)
    server.send_length = False  # 3.3 crashes with TypeError here
    path = download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD


def test_offline_never_touches_the_network(server, tmp_path, monkeypatch):
    url = _openai_url(server)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        download_pretrained_from_url(url, cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "RN50.pt" in msg and str(tmp_path) in msg and "HF_HUB_OFFLINE" in msg
    assert server.requests == []

    (tmp_path / "RN50.pt").write_bytes(PAYLOAD)
    assert download_pretrained_from_url(url, cache_dir=str(tmp_path)) == str(tmp_path / "RN50.pt")
    (tmp_path / "RN50.pt").write_bytes(b"bad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptCacheError, match="HF_HUB_OFFLINE"):
            download_pretrained_from_url(url, cache_dir=str(tmp_path))
    assert server.requests == []


def test_default_cache_location(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = download_pretrained_from_url(_openai_url(server))
    assert path == str(tmp_path / ".cache" / "clip" / "RN50.pt")


# ---- 3.3's own test style: `open_clip.pretrained.urllib` replaced by a mock ----------------


class _FakeResponse(io.BytesIO):
    """What the mocked urlopen returns: read(n), headers.get('Content-Length'), context manager."""

    def __init__(self, data):
        super().__init__(data)
        self.status = 200
        self.headers = {"Content-Length": len(data)}


@pytest.mark.parametrize("kind", ["openai", "mlfoundations"])
@pytest.mark.parametrize("cache", ["none", "valid", "corrupt"])
def test_mocked_urllib(kind, cache, tmp_path):
    data = b"pretrained model weights"
    digest = hashlib.sha256(data).hexdigest()
    if kind == "openai":
        url = f"https://openaipublic.azureedge.net/clip/models/{digest}/RN50.pt"
        name = "RN50.pt"
    else:
        name = f"RN50_yfcc15m-{digest[:8]}.pt"
        url = f"https://github.com/mlfoundations/download/v0.2-weights/{name}"
    if cache != "none":
        (tmp_path / name).write_bytes(data if cache == "valid" else b"corrupted pretrained model")
    with mock.patch.object(pretrained, "urllib") as urllib:
        urllib.request.urlopen.return_value = _FakeResponse(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            download_pretrained_from_url(url, str(tmp_path))
        assert urllib.request.urlopen.call_count == (0 if cache == "valid" else 1)
    assert (tmp_path / name).read_bytes() == data


def test_mocked_urllib_corrupted_download(tmp_path):
    digest = hashlib.sha256(b"pretrained model weights").hexdigest()
    url = f"https://openaipublic.azureedge.net/clip/models/{digest}/RN50.pt"
    with mock.patch.object(pretrained, "urllib") as urllib:
        urllib.request.urlopen.return_value = _FakeResponse(b"corrupted pretrained model")
        with pytest.raises(RuntimeError, match=r"checksum does not not match"):
            download_pretrained_from_url(url, str(tmp_path))


def test_concurrent_downloads_of_the_same_file(server, tmp_path):
    """Several ranks fetching the same weights at once all end with the complete, verified file."""
    url = _openai_url(server)
    server.chunk_delay = 0.005
    results, errors = [], []

    def fetch():
        try:
            results.append(download_pretrained_from_url(url, cache_dir=str(tmp_path)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [str(tmp_path / "RN50.pt")] * 4
    assert (tmp_path / "RN50.pt").read_bytes() == PAYLOAD
    assert os.listdir(tmp_path) == ["RN50.pt"]
