"""DIV2K download and verification against a local HTTP server on 127.0.0.1 (no internet needed).

The server serves zips the test builds (DIV2K member names, tiny PNGs), honours Range requests, and can
drop the connection part-way to exercise the resume path.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srtool.errors import UserError
from srtool.prepare import prepare_div2k
from srtool.prepare.div2k import verify_zip
from srtool.prepare.download import DownloadError, download
from srtool.resize import downscale
from cli_runner import run_cli as _cli


def div2k_zip(split: str, size=(16, 12), corrupt_member: str | None = None) -> bytes:
    """A DIV2K-shaped archive: ``DIV2K_{split}_HR/NNNN.png`` with the official numbering, tiny noise images."""
    numbers = range(1, 801) if split == "train" else range(801, 901)
    rng = np.random.default_rng(len(numbers))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for n in numbers:
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(png, "PNG", compress_level=0)
            zf.writestr(f"DIV2K_{split}_HR/{n:04d}.png", png.getvalue())
    data = bytearray(buf.getvalue())
    if corrupt_member:  # flip one byte of that member's stored data: its CRC no longer matches
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
            info = zf.getinfo(corrupt_member)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 40
        data[offset] ^= 0xFF
    return bytes(data)


class Server:
    """Serves ``files`` (path -> bytes); ``drop_after[path] = n`` cuts the next full response after n bytes;
    ``hold[path] = (n, sent, go)`` sends the next full response's first n bytes, sets ``sent`` and waits for
    ``go`` before the rest; a path in ``redirect_loop`` redirects to itself."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.hold: dict[str, tuple[int, threading.Event, threading.Event]] = {}
        self.redirect_loop: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path in server.redirect_loop:
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[start:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                held = server.hold.pop(self.path, None) if not rng else None
                if held is not None:
                    self.wfile.write(body[:held[0]])
                    self.wfile.flush()
                    held[1].set()
                    held[2].wait(30)
                    start = held[0]
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def valid_zip() -> bytes:
    return div2k_zip("valid")


def test_dropped_connection_resumes_with_range(server, tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    server.files["/big.bin"] = payload
    server.drop_after["/big.bin"] = 1_234_567
    seen = []
    dest = download(f"{server.url}/big.bin", tmp_path / "big.bin", backoff=0.01, on_progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == payload
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=1234567-")]
    assert seen[-1] == (len(payload), len(payload))
    assert not (tmp_path / "big.bin.part").exists()


def test_part_file_from_a_killed_run_is_resumed(server, tmp_path):
    payload = bytes(range(256)) * 4000
    server.files["/f.zip"] = payload
    (tmp_path / "f.zip.part").write_bytes(payload[:100_000])
    download(f"{server.url}/f.zip", tmp_path / "f.zip")
    assert (tmp_path / "f.zip").read_bytes() == payload
    assert server.requests == [("/f.zip", "bytes=100000-")]


def test_a_part_longer_than_the_file_starts_over(server, tmp_path):
    server.files["/f.bin"] = b"z" * 1000
    (tmp_path / "f.bin.part").write_bytes(b"q" * 1500)  # stale leftover of some other file
    assert download(f"{server.url}/f.bin", tmp_path / "f.bin").read_bytes() == b"z" * 1000
    assert server.requests == [("/f.bin", "bytes=1500-"), ("/f.bin", None)]


def test_checksum_mismatch_moves_the_file_aside(server, tmp_path):
    server.files["/f.zip"] = b"x" * 5000
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(f"{server.url}/f.zip", tmp_path / "f.zip", sha256="0" * 64)
    assert not (tmp_path / "f.zip").exists()
    assert (tmp_path / "f.zip.part.bad").read_bytes() == b"x" * 5000
    good = hashlib.sha256(b"x" * 5000).hexdigest()
    assert download(f"{server.url}/f.zip", tmp_path / "f.zip", sha256=good).read_bytes() == b"x" * 5000


def test_repeated_drops_give_up_with_a_clear_error(server, tmp_path):
    server.files["/f.bin"] = b"y" * 10_000
    with pytest.raises(DownloadError, match="run again to resume from 0 bytes|HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "f.bin", retries=0)
    server.drop_after["/f.bin"] = 0
    with pytest.raises(DownloadError, match="download failed after 0 retries"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", retries=0, backoff=0.01)


def test_div2k_download_verify_and_prepare(server, tmp_path, valid_zip):
    server.files["/DIV2K_valid_HR.zip"] = valid_zip
    server.drop_after["/DIV2K_valid_HR.zip"] = len(valid_zip) // 3
    results = prepare_div2k(out=tmp_path, splits=("valid",), base_url=server.url + "/", workers=1, progress=False)
    valid = results["valid"]
    assert valid.ok and len(valid.records) == 100
    assert (tmp_path / "downloads" / "DIV2K_valid_HR.zip").read_bytes() == valid_zip
    hr = np.asarray(Image.open(tmp_path / "DIV2K" / "valid" / "HR" / "0801.png"))
    lr = np.asarray(Image.open(tmp_path / "DIV2K" / "valid" / "LR_bicubic" / "X4" / "0801.png"))
    with zipfile.ZipFile(io.BytesIO(valid_zip)) as zf:
        original = np.asarray(Image.open(io.BytesIO(zf.read("DIV2K_valid_HR/0801.png"))))
    assert np.array_equal(hr, original) and np.array_equal(lr, downscale(original, 4))
    import json

    manifest = json.loads((tmp_path / "DIV2K" / "valid" / "manifest.json").read_text())
    assert manifest["sources"][0]["sha256"] == hashlib.sha256(valid_zip).hexdigest()
    assert manifest["sources"][0]["url"].endswith("/DIV2K_valid_HR.zip")
    # a re-run neither downloads again nor redoes images
    n = len(server.requests)
    again = prepare_div2k(out=tmp_path, splits=("valid",), base_url=server.url + "/", workers=1, progress=False)
    assert len(server.requests) == n and again["valid"].reused == 100 and again["valid"].processed == 0


def test_div2k_crc_mismatch_is_moved_aside_and_never_used(server, tmp_path):
    server.files["/DIV2K_valid_HR.zip"] = div2k_zip("valid", corrupt_member="DIV2K_valid_HR/0850.png")
    with pytest.raises(UserError, match="member DIV2K_valid_HR/0850.png is corrupt.*moved aside"):
        prepare_div2k(out=tmp_path, splits=("valid",), base_url=server.url + "/", workers=1, progress=False)
    assert not (tmp_path / "downloads" / "DIV2K_valid_HR.zip").exists()
    assert (tmp_path / "downloads" / "DIV2K_valid_HR.zip.bad").exists()
    assert not (tmp_path / "DIV2K").exists()


def test_pinned_sha256_mismatch_on_download(server, tmp_path, valid_zip):
    server.files["/DIV2K_valid_HR.zip"] = valid_zip
    code = _cli("prepare", "div2k", "--out", str(tmp_path), "--split", "valid", "--mirror", server.url,
                "--sha256", "valid=" + "ab" * 32, "--no-progress")
    assert code == 2
    assert (tmp_path / "downloads" / "DIV2K_valid_HR.zip.part.bad").exists()


def test_non_div2k_zip_is_refused_with_one_line(tmp_path, capsys):
    other = tmp_path / "photos.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("holiday/0001.png", b"not really")
        zf.writestr("holiday/readme.txt", b"hi")
    assert _cli("prepare", "div2k", "--source", str(other), "--out", str(tmp_path / "o"), "--no-progress") == 2
    err = capsys.readouterr().err
    assert "not a DIV2K HR archive" in err and "photos.zip" in err and len(err.strip().splitlines()) == 1
    assert other.exists()  # a user's own file is refused, never moved
    with pytest.raises(UserError, match="not a DIV2K"):
        verify_zip(other)


@pytest.fixture
def fast_tmp(tmp_path):
    """tmpfs when available: 900 images x 5 fsynced files would spend most of the test waiting on the disk."""
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_mode & 0o002:
        with tempfile.TemporaryDirectory(dir=shm, prefix="srtool-test-") as d:
            yield Path(d)
    else:
        yield tmp_path


def test_div2k_from_local_sources_builds_the_train_store(fast_tmp, valid_zip):
    tmp_path = fast_tmp
    train = tmp_path / "DIV2K_train_HR.zip"
    train.write_bytes(div2k_zip("train", size=(8, 8)))
    valid_dir = tmp_path / "valid_pngs"
    with zipfile.ZipFile(io.BytesIO(valid_zip)) as zf:
        zf.extractall(valid_dir)
    results = prepare_div2k([train, valid_dir], out=tmp_path / "data", workers=2, progress=False)
    assert len(results["train"].records) == 800 and len(results["valid"].records) == 100
    from srtool.prepare import TrainingStore

    store = TrainingStore.open(tmp_path / "data" / "DIV2K" / "train", 4)
    assert len(store) == 800 and store.hr(0).shape == (8, 8, 3) and store.lr(0).shape == (2, 2, 3)
    assert not (tmp_path / "data" / "DIV2K" / "valid" / "store").exists()


