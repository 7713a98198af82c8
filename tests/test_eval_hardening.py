"""Issue 15, eval items: outputs never replace inputs, clashing/bad output names, figure options,
damaged images found before any model runs, model outputs checked (wrong shape, NaN).

Each test works on a copy of Set5 (real images), asserts the exit code and the one-line message,
and hashes the inputs before and after. Refusals must come *before* any evaluation: the tests make
:func:`srtool.evaluate.evaluate` fail loudly if it is reached.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from srtool.cli import main


def cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0), capsys.readouterr().err


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in err, (needle, err)


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def set5(shared_data, tmp_path) -> Path:
    """A private copy of Set5 (HR + LR x4) that tests may aim outputs at."""
    dst = tmp_path / "Set5"
    shutil.copytree(shared_data / "benchmarks" / "Set5", dst)
    return dst


@pytest.fixture
def no_evaluation(monkeypatch):
    """Refusals must come before any model runs."""
    import srtool.evaluate

    def reached(*args, **kwargs):
        raise AssertionError("evaluation started although the command should have been refused first")

    monkeypatch.setattr(srtool.evaluate, "evaluate", reached)


def evalcmd(set5: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "bicubic", "--data", str(set5), *extra]


# ------------------------------------------------------------------ 1. outputs never replace inputs


@pytest.mark.parametrize("option", ["--figure", "--json", "--csv", "--markdown"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_naming_an_input_image_is_refused_even_with_overwrite(set5, capsys, no_evaluation, option, overwrite):
    before = tree_hash(set5)
    target = set5 / "HR" / "baby.png" if option == "--figure" else set5 / "LR_bicubic" / "X4" / "bird.png"
    code, err = cli(capsys, *evalcmd(set5, option, str(target), *(["--overwrite"] if overwrite else [])))
    one_line(code, err, option, target.name, "input")
    assert tree_hash(set5) == before


def test_output_reaching_an_input_through_a_link_or_dots_is_refused(set5, tmp_path, capsys, no_evaluation):
    before = tree_hash(set5)
    (tmp_path / "link").symlink_to(set5 / "HR")
    code, err = cli(capsys, *evalcmd(set5, "--figure", str(tmp_path / "link" / "head.png"), "--overwrite"))
    one_line(code, err, "--figure", "head.png", "input")
    code, err = cli(capsys, *evalcmd(set5, "--json", str(set5 / "HR" / ".." / "HR" / "woman.png"), "--overwrite"))
    one_line(code, err, "--json", "woman.png", "input")
    assert tree_hash(set5) == before


def test_save_images_landing_on_an_input_is_refused(set5, tmp_path, capsys, no_evaluation):
    # --save-images ROOT writes ROOT/<dataset>/<model>/<image>.png: make that an HR image of the set.
    data = tmp_path / "bicubic"
    shutil.copytree(set5 / "HR", data / "HR")
    root = tmp_path / "out"
    (root / "bicubic").mkdir(parents=True)
    (root / "bicubic" / "bicubic").symlink_to(data / "HR")
    before = tree_hash(data)
    code, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(data), "--save-images", str(root), "--overwrite")
    one_line(code, err, "--save-images", "baby.png", "input")
    assert tree_hash(data) == before


def test_output_naming_the_model_file_is_refused(set5, tmp_path, capsys, no_evaluation):
    import torch

    from srtool.models.export import save_export
    from srtool.models.srresnet import SRResNet, SRResNetConfig

    torch.manual_seed(0)
    model = save_export(tmp_path / "m.safetensors", SRResNet(SRResNetConfig(n_feats=8, n_blocks=1)))
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    code, err = cli(capsys, "eval", "--model", str(model), "--device", "cpu", "--data", str(set5),
                    "--csv", str(model), "--overwrite")
    one_line(code, err, "--csv", "m.safetensors", "model file")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


# ------------------------------------------------------------------- 2./3. output names that clash


def test_json_and_csv_on_one_file_are_refused(set5, tmp_path, capsys, no_evaluation):
    code, err = cli(capsys, *evalcmd(set5, "--json", str(tmp_path / "r.txt"), "--csv", str(tmp_path / "r.txt")))
    one_line(code, err, "--csv", "--json", "r.txt")
    assert not (tmp_path / "r.txt").exists()
    code, err = cli(capsys, *evalcmd(set5, "--markdown", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png"),
                                     "--json", str(tmp_path / "sub" / ".." / "r.md")))
    one_line(code, err, "r.md", "--markdown", "--json")


def test_json_naming_a_folder_or_a_path_below_a_file_is_refused(set5, tmp_path, capsys, no_evaluation):
    (tmp_path / "folder").mkdir()
    code, err = cli(capsys, *evalcmd(set5, "--json", str(tmp_path / "folder"), "--overwrite"))
    one_line(code, err, "--json", "folder", "is a folder")
    (tmp_path / "notes.txt").write_text("mine")
    code, err = cli(capsys, *evalcmd(set5, "--json", str(tmp_path / "notes.txt" / "r.json")))
    one_line(code, err, "--json", "notes.txt", "is a file")
    code, err = cli(capsys, *evalcmd(set5, "--save-images", str(tmp_path / "notes.txt")))
    one_line(code, err, "--save-images", "notes.txt", "not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine" and list((tmp_path / "folder").iterdir()) == []


# --------------------------------------------------------------------- 4. duplicate stems, --save-images


def test_duplicate_stems_with_save_images_are_refused_up_front(set5, tmp_path, capsys, no_evaluation):
    from PIL import Image

    data = tmp_path / "mixed"
    shutil.copytree(set5 / "HR", data / "HR")
    Image.open(data / "HR" / "bird.png").save(data / "HR" / "bird.jpg", quality=95)
    before = tree_hash(data)
    code, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(data), "--save-images", str(tmp_path / "sr"))
    one_line(code, err, "bird.png", "bird.jpg", "--save-images")
    assert tree_hash(data) == before and not (tmp_path / "sr").exists()


# ------------------------------------------------------------- 5./10. figure options checked up front


def test_figure_region_outside_any_choosable_image_is_refused_before_work(set5, tmp_path, capsys, no_evaluation):
    # Set5's smallest images (bird, butterfly) are 288x288 / 256x256: a region at 300,300 fits only some.
    code, err = cli(capsys, *evalcmd(set5, "--figure", str(tmp_path / "f.png"), "--figure-region", "300,300,40,40"))
    one_line(code, err, "--figure-region", "300,300,40,40", "outside", "--figure-image")
    assert not (tmp_path / "f.png").exists()


def test_figure_region_too_small_or_without_figure_is_refused(set5, tmp_path, capsys, no_evaluation):
    code, err = cli(capsys, *evalcmd(set5, "--figure", str(tmp_path / "f.png"), "--figure-region", "10,10,1,1"))
    one_line(code, err, "--figure-region", "at least")
    code, err = cli(capsys, *evalcmd(set5, "--figure-region", "500,500,50,50"))
    one_line(code, err, "--figure-region", "--figure")
    code, err = cli(capsys, *evalcmd(set5, "--figure-image", "bird"))
    one_line(code, err, "--figure-image", "--figure")
    assert not (tmp_path / "f.png").exists()


def test_tilde_after_equals_is_the_home_folder_for_every_output(set5, tmp_path, capsys, monkeypatch):
    """bash leaves `~` alone in `--json=~/r.json`: eval expands it for every output, as it does when checking
    them (it used to check ~/r.json but write ./~/r.json, a folder named `~` in the working directory)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    code, err = cli(capsys, *evalcmd(set5, "--json=~/r.json", "--csv=~/r.csv", "--markdown=~/r.md",
                                     "--figure=~/f.png", "--save-images=~/sr", "--no-progress"))
    assert code == 0, err
    assert sorted(p.name for p in home.iterdir()) == ["f.png", "r.csv", "r.json", "r.md", "sr"]
    assert len(list((home / "sr").rglob("*.png"))) == 5
    assert not any(work.iterdir()), list(work.iterdir())
    code, err = cli(capsys, *evalcmd(set5, "--json=~/r.json"))  # and the existing file is the one refused
    one_line(code, err, "--json", "file exists")
