"""srtool prepare benchmark / folder: bit-exact LR, training store, re-runs, dataset names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srtool.errors import UserError
from srtool.prepare import TrainingStore, data_dir, prepare_folder, resolve_dataset, run_folder, tile_grid
from srtool.resize import downscale, modcrop
from cli_runner import run_cli




def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.parametrize(
    "dataset,edge,workers", [("Set5", "replicate", "1"), ("Set14", "replicate", "2"), ("Set5-mirror-edge", "mirror", "1")]
)
def test_benchmark_reproduces_published_lr_bit_for_bit(benchmarks_dir, tmp_path, dataset, edge, workers):
    src = benchmarks_dir / dataset
    out = tmp_path / dataset
    code = run_cli("prepare", "benchmark", str(src / "HR"), "--out", str(out), "--scale", "4", "--edge", edge,
                   "--workers", workers, "--no-progress")
    assert code == 0
    published = sorted((src / "LR_bicubic" / "X4").glob("*.png"))
    assert len(published) == {"Set5": 5, "Set14": 14, "Set5-mirror-edge": 5}[dataset]
    for lr_path in published:
        ours = load(out / "LR_bicubic" / "X4" / lr_path.name)
        theirs = load(lr_path)
        assert ours.shape == theirs.shape and ours.dtype == np.uint8, lr_path.name
        assert np.array_equal(ours, theirs), f"{dataset}/{lr_path.name}: {np.count_nonzero(ours != theirs)} pixels differ"
        hr_in = load(src / "HR" / lr_path.name)
        assert np.array_equal(load(out / "HR" / lr_path.name), modcrop(hr_in, 4))
    if dataset == "Set5":  # plain 8-bit RGB PNGs already mod-4: the HR file is the source file, byte for byte
        assert all((out / "HR" / p.name).read_bytes() == p.read_bytes() for p in (src / "HR").glob("*.png"))
    if dataset == "Set14":  # grayscale stays single-channel
        assert load(out / "HR" / "bridge.png").ndim == 2 and load(out / "LR_bicubic" / "X4" / "bridge.png").ndim == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scale"] == 4 and manifest["recipe"]["edge"] == edge and manifest["store"] is None
    assert manifest["srtool_version"] and len(manifest["images"]) == len(published)
    entry = manifest["images"][0]
    assert len(entry["source_sha256"]) == 64 and set(entry["outputs"]) == {
        f"HR/{entry['name']}.png", f"LR_bicubic/X4/{entry['name']}.png"}


def _subset(tmp_path: Path, shared_data: Path) -> Path:
    """A fast T91+BSD200 subset: folders of symlinks (the shared files are never copied)."""
    picks = {"T91": ["t1.png", "t2.png", "t46.png", "tt27.png"], "BSD200": None}  # t46 is 508 wide: 2 windows
    root = tmp_path / "src"
    for folder, names in picks.items():
        src = shared_data / "train" / folder
        files = sorted(src.iterdir())
        chosen = [src / n for n in names] if names else files[:3]
        (root / folder).mkdir(parents=True)
        for f in chosen:
            assert f.exists(), f
            (root / folder / f.name).symlink_to(f)
    return root


def test_folder_store_matches_full_image_lr(shared_data, tmp_path):
    src = _subset(tmp_path, shared_data)
    out = tmp_path / "train291"
    result = run_folder([src / "T91", src / "BSD200"], out, scale=4, workers=2, progress=False)
    assert result.ok and result.processed == 7 and result.reused == 0
    store = TrainingStore.open(out, 4)
    assert store.num_images == 7
    assert len(store) == sum(len(tile_grid(*r["shape"][:2], 4)) for r in result.records)
    lr_cache: dict[str, np.ndarray] = {}
    re_resized_differs = 0
    for i in range(len(store)):
        name = store.image_name(i)
        y, x, h, w = store.window(i)
        hr_full = load(out / "HR" / f"{name}.png")
        if name not in lr_cache:
            lr_cache[name] = downscale(hr_full, 4)  # the LR of the WHOLE image
            assert np.array_equal(lr_cache[name], load(out / "LR_bicubic" / "X4" / f"{name}.png"))
        hr_tile, lr_tile = store.hr(i), store.lr(i)
        assert isinstance(hr_tile, np.memmap) and hr_tile.dtype == np.uint8 and hr_tile.shape == (h, w, 3)
        assert lr_tile.shape == (h // 4, w // 4, 3)
        assert np.array_equal(hr_tile, np.atleast_3d(hr_full)[y : y + h, x : x + w].repeat(1 if hr_full.ndim == 3 else 3, axis=2))
        assert np.array_equal(lr_tile[..., 0] if lr_cache[name].ndim == 2 else lr_tile,
                              lr_cache[name][y // 4 : (y + h) // 4, x // 4 : (x + w) // 4])
        re_resized_differs += not np.array_equal(np.asarray(lr_tile), downscale(np.asarray(hr_tile), 4))
    assert re_resized_differs > 0  # a crop of the whole LR is not a re-resize of the crop: the store must not do that
    # BSD200 images are 481x321 -> 480x320 after modcrop -> one 320x480 window each; T91 ones are kept whole
    assert {tuple(store.window(i)[2:]) for i in range(len(store)) if store.image_name(i)[0].isdigit()} <= {(320, 480), (480, 320)}
    assert [store.window(i) for i in range(len(store)) if store.image_name(i) == "t46"] == [(0, 0, 232, 480), (0, 28, 232, 480)]

    # a re-run verifies and reuses everything, and writes the same bytes
    before = (out / "manifest.json").read_bytes()
    again = run_folder([src / "T91", src / "BSD200"], out, scale=4, workers=1, progress=False)
    assert again.processed == 0 and again.reused == 7
    assert (out / "manifest.json").read_bytes() == before
    # a damaged output is detected by its sha256 and redone
    hr_png = out / "HR" / "t1.png"
    hr_png.write_bytes(b"garbage")
    third = run_folder([src / "T91", src / "BSD200"], out, scale=4, workers=1, progress=False)
    assert third.processed == 1 and third.reused == 6
    assert (out / "manifest.json").read_bytes() == before


def test_tile_grid_covers_the_image_with_aligned_windows():
    grid = tile_grid(1356, 2040, 4)
    assert len(grid) == 5 * 8  # BasicSR: 480 px, step 240, last window flush with the border
    covered = np.zeros((1356, 2040), bool)
    for y, x, h, w in grid:
        assert y % 4 == 0 and x % 4 == 0 and (h, w) == (480, 480)
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    assert tile_grid(120, 300, 3) == [(0, 0, 120, 300)]  # smaller than a tile: kept whole
    assert all(v % 3 == 0 for win in tile_grid(999, 1500, 3) for v in win)


def test_rerun_with_other_recipe_needs_overwrite(shared_data, tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "baby.png").symlink_to(shared_data / "benchmarks" / "Set5" / "HR" / "baby.png")
    out = tmp_path / "out"
    assert run_cli("prepare", "benchmark", str(hr), "--out", str(out), "--workers", "1", "--no-progress") == 0
    assert run_cli("prepare", "benchmark", str(hr), "--out", str(out), "--edge", "mirror", "--workers", "1", "--no-progress") == 2
    assert run_cli("prepare", "benchmark", str(hr), "--out", str(out), "--edge", "mirror", "--workers", "1",
                   "--no-progress", "--overwrite") == 0
    mirror = load(shared_data / "benchmarks" / "Set5-mirror-edge" / "LR_bicubic" / "X4" / "baby.png")
    assert np.array_equal(load(out / "LR_bicubic" / "X4" / "baby.png"), mirror)
    # a user's file that srtool did not write is never overwritten silently
    user = tmp_path / "user"
    (user / "HR").mkdir(parents=True)
    (user / "HR" / "baby.png").write_bytes(b"mine")
    assert run_cli("prepare", "benchmark", str(hr), "--out", str(user), "--workers", "1", "--no-progress") == 2
    assert (user / "HR" / "baby.png").read_bytes() == b"mine"
    # and never into the source folder itself, not even with --overwrite
    src_parent = tmp_path / "inplace"
    (src_parent / "HR").mkdir(parents=True)
    Image.new("RGB", (30, 30)).save(src_parent / "HR" / "x.png")
    before = (src_parent / "HR" / "x.png").read_bytes()
    assert run_cli("prepare", "benchmark", str(src_parent / "HR"), "--out", str(src_parent), "--overwrite", "--no-progress") == 2
    assert (src_parent / "HR" / "x.png").read_bytes() == before


def test_rerun_keeps_a_file_the_user_put_under_a_new_inputs_output_name(shared_data, tmp_path, capsys):
    """A folder srtool prepared, a new input added, and a file of the user's already under its output
    name: the re-run used to replace it silently (a fresh --out refuses that, exit 2). Now that image
    is skipped (exit 1, one line naming the file) and the file kept, unless --overwrite."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("t1.png", "t2.png"):
        (src / name).symlink_to(shared_data / "train" / "T91" / name)
    out = tmp_path / "out"
    args = ["prepare", "folder", str(src), "--out", str(out), "--workers", "1", "--no-progress"]
    assert run_cli(*args) == 0
    mine = out / "LR_bicubic" / "X4" / "t5.png"
    shutil.copyfile(shared_data / "train" / "T91" / "t3.png", mine)  # the user's own file
    (src / "t5.png").symlink_to(shared_data / "train" / "T91" / "t5.png")
    capsys.readouterr()
    assert run_cli(*args) == 1
    err = capsys.readouterr().err
    assert f"{mine}: already exists and was not written by srtool prepare" in err and "Traceback" not in err
    assert mine.read_bytes() == (shared_data / "train" / "T91" / "t3.png").read_bytes()
    assert run_cli(*args, "--overwrite") == 0
    assert np.array_equal(load(mine), downscale(load(out / "HR" / "t5.png"), 4))


def test_missing_source_and_unwritable_out_are_one_line_exit_2(tmp_path, capsys):
    assert run_cli("prepare", "folder", str(tmp_path / "nope"), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (16, 16)).save(src / "a.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert run_cli("prepare", "folder", str(src), "--out", str(blocker / "sub")) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("prepare", "folder", str(empty), "--out", str(tmp_path / "o2")) == 2
    assert "no input images" in capsys.readouterr().err


def test_resolve_dataset_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SRTOOL_DATA_DIR", str(tmp_path / "data"))
    assert data_dir() == tmp_path / "data"
    with pytest.raises(UserError, match="not prepared.*srtool prepare benchmark"):
        resolve_dataset("Set5", 4)
    (tmp_path / "data" / "Set5" / "HR").mkdir(parents=True)
    (tmp_path / "data" / "DIV2K" / "valid" / "HR").mkdir(parents=True)
    assert resolve_dataset("set5", 4) == tmp_path / "data" / "Set5"
    assert resolve_dataset("DIV2K-valid", 4) == tmp_path / "data" / "DIV2K" / "valid"
    own = tmp_path / "mine"
    (own / "HR").mkdir(parents=True)
    assert resolve_dataset(str(own), 4) == own
    with pytest.raises(UserError, match="neither an HR/ subfolder"):
        resolve_dataset(str(tmp_path / "data"), 4)
    with pytest.raises(UserError, match="not a known dataset name"):
        resolve_dataset("Set55", 4)


def test_store_refuses_wrong_scale_and_missing_store(tmp_path, shared_data):
    src = tmp_path / "s"
    src.mkdir()
    (src / "t1.png").symlink_to(shared_data / "train" / "T91" / "t1.png")
    assert prepare_folder([src], tmp_path / "o", scale=2, workers=1, progress=False) == tmp_path / "o"  # the contract
    store = TrainingStore.open(tmp_path / "o" / "store", 2)
    assert store.lr(0).shape[0] * 2 == store.hr(0).shape[0]
    with pytest.raises(UserError, match="built for x2"):
        TrainingStore.open(tmp_path / "o", 4)
    with pytest.raises(UserError, match="no training store"):
        TrainingStore.open(tmp_path, 4)
    import pickle

    clone = pickle.loads(pickle.dumps(store))  # DataLoader workers get a picklable store
    assert np.array_equal(clone.hr(0), store.hr(0))
