"""``prepare div2k --source`` with hostile archives (issue 14 items 6, 9a, 9c).

Each archive is built by the test (DIV2K member names, tiny PNGs) and then damaged the way an
attacker or a broken mirror would: duplicate members, deflate64, encryption, a corrupt deflate
stream, zip bombs (honest and lying headers). Each must be one line (exit 2) naming the archive and
the member, with nothing written outside ``--out``.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli


def _png(rng, size=8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def valid_zip(extra: list[tuple[str, bytes]] = (), first: list[tuple[str, bytes]] = (), seed=1) -> bytes:
    """DIV2K valid layout (DIV2K_valid_HR/0801.png .. 0900.png), deflated; ``first``/``extra`` members around it."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests add on purpose
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in first:
                zf.writestr(name, data)
            for n in range(801, 901):
                zf.writestr(f"DIV2K_valid_HR/{n:04d}.png", _png(rng))
            for name, data in extra:
                zf.writestr(name, data)
    return buf.getvalue()


_LOCAL = {"flags": 6, "method": 8, "size": 22}
_CENTRAL = {"flags": 8, "method": 10, "size": 24}


def patch(data: bytes, member: str, field: str, value: int) -> bytes:
    """Set a header field of ``member`` in both its local header and its central-directory entry."""
    out = bytearray(data)
    fmt = "<I" if field == "size" else "<H"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        local = zf.getinfo(member).header_offset
    struct.pack_into(fmt, out, local + _LOCAL[field], value)
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos + 1)) != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46: pos + 46 + name_len] == member.encode():
            struct.pack_into(fmt, out, pos + _CENTRAL[field], value)
    return bytes(out)


def corrupt_stream(data: bytes, member: str) -> bytes:
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    out[start: start + 12] = b"\xff" * 12  # invalid deflate block type / garbage codes
    return bytes(out)


@pytest.fixture(scope="module")
def base_zip() -> bytes:
    return valid_zip()


def _bomb() -> list[tuple[str, bytes]]:
    return [("DIV2K_valid_HR/0850.png", bytes(40 << 20))]  # 40 MB of zeros, ~40 kB deflated


HOSTILE = {
    "duplicate": (lambda z: valid_zip(extra=[("DIV2K_valid_HR/0850.png", b"second copy")]), "appears twice"),
    "deflate64": (lambda z: patch(z, "DIV2K_valid_HR/0850.png", "method", 9), "deflate64"),
    "encrypted": (lambda z: patch(z, "DIV2K_valid_HR/0850.png", "flags", 1), "encrypted"),
    "corrupt-deflate": (lambda z: corrupt_stream(z, "DIV2K_valid_HR/0850.png"), "corrupt"),
    "bomb": (lambda z: valid_zip(first=_bomb(), seed=2), "inflates to"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_one_clear_error(case, base_zip, tmp_path, capsys):
    make, expected = HOSTILE[case]
    src = tmp_path / "src"
    src.mkdir()
    archive = src / "DIV2K_valid_HR.zip"
    data = make(base_zip)
    if case == "bomb":  # the bomb's name collides with the real 0850: keep only the bomb's entry
        data = _drop_later_duplicate(data, "DIV2K_valid_HR/0850.png")
    archive.write_bytes(data)
    code = run_cli("prepare", "div2k", "--split", "valid", "--source", str(archive), "--out", str(tmp_path / "out"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2, err  # today: internal errors (exit 1), or gigabytes inflated
    assert len(err.strip().splitlines()) == 1 and "internal" not in err, err
    assert expected in err and str(archive) in err and "DIV2K_valid_HR/0850.png" in err, err
    assert sorted(p.name for p in src.iterdir()) == ["DIV2K_valid_HR.zip"]  # the user's archive: untouched, alone
    assert archive.read_bytes() == data
    assert not (tmp_path / "out" / "DIV2K").exists()


def _drop_later_duplicate(data: bytes, member: str) -> bytes:
    """Rewrite the archive keeping the first entry of ``member`` only (raw copy, headers untouched)."""
    out = io.BytesIO()
    seen = set()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename in seen:
                continue
            seen.add(info.filename)
            dst.writestr(info, src.read(info) if info.filename != member else bytes(info.file_size))
    return out.getvalue()


def test_lying_bomb_header_is_bounded(tmp_path, capsys):
    """A member whose header claims a small size but whose stream inflates to 40 MB: reading stops at the claim."""
    data = _drop_later_duplicate(valid_zip(first=_bomb(), seed=2), "DIV2K_valid_HR/0850.png")
    data = patch(data, "DIV2K_valid_HR/0850.png", "size", 1000)
    archive = tmp_path / "DIV2K_valid_HR.zip"
    archive.write_bytes(data)
    code = run_cli("prepare", "div2k", "--split", "valid", "--source", str(archive), "--out", str(tmp_path / "out"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "DIV2K_valid_HR/0850.png is corrupt" in err, err


@pytest.mark.parametrize("mirror", ["not-a-url", "/srv/div2k", "ftp://example.org/div2k/", "http://"])
def test_mirror_must_be_an_http_url(mirror, tmp_path, capsys):
    code = run_cli("prepare", "div2k", "--split", "valid", "--mirror", mirror, "--out", str(tmp_path / "out"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "--mirror" in err and "URL" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_members_matched_by_full_expected_path(tmp_path, capsys):
    """A decoy ``other/0801.png`` after ``DIV2K_valid_HR/0801.png`` must not be taken."""
    decoy = _png(np.random.default_rng(99), size=12)
    archive = tmp_path / "DIV2K_valid_HR.zip"
    archive.write_bytes(valid_zip(extra=[("other/0801.png", decoy)]))
    code = run_cli("prepare", "div2k", "--split", "valid", "--source", str(archive), "--out", str(tmp_path / "out"),
                   "--workers", "1", "--no-progress")
    assert code == 0, capsys.readouterr().err
    with zipfile.ZipFile(archive) as zf:
        real = np.asarray(Image.open(io.BytesIO(zf.read("DIV2K_valid_HR/0801.png"))))
    written = np.asarray(Image.open(tmp_path / "out" / "DIV2K" / "valid" / "HR" / "0801.png"))
    assert written.shape == real.shape == (8, 8, 3) and np.array_equal(written, real)  # today: the 12x12 decoy


def test_stale_temp_cleanup_keeps_users_files(tmp_path, benchmarks_dir, capsys):
    out = tmp_path / "out"
    (out / "HR").mkdir(parents=True)
    notes = out / ".notes.tmp"
    notes.write_text("my notes")
    user_hr = out / "HR" / ".draft.png.tmp"
    user_hr.write_text("mine too")
    stale = out / "HR" / ".srtool-ab12cd34.png.tmp"  # what an interrupted atomic write leaves
    stale.write_bytes(b"partial")
    code = run_cli("prepare", "benchmark", str(benchmarks_dir / "Set5" / "HR"), "--out", str(out), "--no-progress")
    assert code == 0, capsys.readouterr().err
    assert notes.read_text() == "my notes" and user_hr.read_text() == "mine too"  # today: both deleted
    assert not stale.exists()
