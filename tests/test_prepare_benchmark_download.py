"""``srtool prepare benchmark --download NAME`` (issue 14 item 17), against a local HTTP server on 127.0.0.1.

The server serves ``Set5_HR.tar.gz`` built by the test from the real Set5 HR images, in the layout of
the public archive (``Set5_HR/baby.png``...); ``--source`` takes a zip of them. The prepared LR must
equal the published MATLAB LR of Set5 bit for bit, as with a local folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli
from test_prepare_download import Server


def set5_tar(hr: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in sorted(hr.glob("*.png")):
            tf.add(p, arcname=f"Set5_HR/{p.name}")
    return buf.getvalue()


def set5_zip(hr: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(hr.glob("*.png")):
            zf.write(p, f"Set5_HR/{p.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _same_pixels(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_download_verify_and_prepare_set5(server, benchmarks_dir, tmp_path, capsys):
    set5 = benchmarks_dir / "Set5"
    data = set5_tar(set5 / "HR")
    server.files["/Set5_HR.tar.gz"] = data
    out = tmp_path / "Set5"
    digest = hashlib.sha256(data).hexdigest()
    code = run_cli("prepare", "benchmark", "--download", "Set5", "--out", str(out), "--mirror", server.url,
                   "--sha256", digest, "--no-progress")
    assert code == 0, capsys.readouterr().err  # today: no such option
    for p in sorted((set5 / "HR").glob("*.png")):
        assert _same_pixels(out / "HR" / p.name, p)
        assert _same_pixels(out / "LR_bicubic" / "X4" / p.name, set5 / "LR_bicubic" / "X4" / p.name)  # MATLAB-exact
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"][0]["sha256"] == digest and manifest["sources"][0]["url"].startswith(server.url)
    assert "licence" in manifest["sources"][0]
    n = len(server.requests)
    assert run_cli("prepare", "benchmark", "--download", "Set5", "--out", str(out), "--mirror", server.url, "--no-progress") == 0
    assert len(server.requests) == n  # downloaded once


def test_pinned_sha256_mismatch_is_moved_aside(server, benchmarks_dir, tmp_path, capsys):
    server.files["/Set5_HR.tar.gz"] = set5_tar(benchmarks_dir / "Set5" / "HR")
    code = run_cli("prepare", "benchmark", "--download", "Set5", "--out", str(tmp_path / "o"), "--mirror", server.url,
                   "--sha256", "ab" * 32, "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "sha256 mismatch" in err
    assert not (tmp_path / "o" / "HR").exists()


def test_offline_error_names_source_and_source_zip_works(server, benchmarks_dir, tmp_path, capsys):
    url = server.url
    server.close()
    code = run_cli("prepare", "benchmark", "--download", "set5", "--out", str(tmp_path / "o"), "--mirror", url, "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "--source" in err and f"{url}/Set5_HR.tar.gz" in err and len(err.strip().splitlines()) == 1, err
    archive = tmp_path / "Set5.zip"
    archive.write_bytes(set5_zip(benchmarks_dir / "Set5" / "HR", extra={"other/baby.png": b"decoy"}))
    code = run_cli("prepare", "benchmark", "--download", "Set5", "--source", str(archive), "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 0, capsys.readouterr().err
    assert _same_pixels(tmp_path / "o" / "HR" / "baby.png", benchmarks_dir / "Set5" / "HR" / "baby.png")


def test_wrong_archives_and_manga109_are_clear_errors(benchmarks_dir, tmp_path, capsys):
    short = tmp_path / "short.zip"
    with zipfile.ZipFile(short, "w") as zf:
        zf.write(benchmarks_dir / "Set5" / "HR" / "baby.png", "Set5_HR/baby.png")
    code = run_cli("prepare", "benchmark", "--download", "Set5", "--source", str(short), "--out", str(tmp_path / "o"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "expected 5 images in Set5_HR/, found 1" in err and short.exists()
    code = run_cli("prepare", "benchmark", "--download", "Manga109", "--out", str(tmp_path / "m"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "manga109.org" in err and not (tmp_path / "m").exists()
