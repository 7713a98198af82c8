"""`srtool eval` on a researcher's everyday path (evalhunt): dataset spellings and odd folders.

Every case is a defect found by trying it: each test fails on the code before its fix. Images are crops
of the real Set5 images; bicubic is the model (no network, fast).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli_err
from test_eval_hardening import one_line


@pytest.fixture
def baby(shared_data) -> np.ndarray:
    return np.asarray(Image.open(shared_data / "benchmarks" / "Set5" / "HR" / "baby.png").convert("RGB"))


@pytest.mark.parametrize("size,scale", [(19, 4), (27, 8)])
def test_image_too_small_after_the_mod_crop_is_named_before_any_work(tmp_path, capsys, baby, size, scale):
    """19x19 at x4: 19 - 2*4 = 11 passed the SSIM-window check, but the generated LR comes from the
    mod-cropped 16x16 HR, 8x8 after the border crop: an internal error after the run started."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:size, :size]).save(folder / "small.png")
    Image.fromarray(baby[:64, :64]).save(folder / "fine.png")
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "--scale", str(scale), "-d", str(folder), "--no-progress")
    one_line(code, err, "small.png", f"{size}x{size}", "too small", "mod-crop")


def test_a_folder_of_images_named_like_a_known_dataset_is_that_folder(tmp_path, capsys, baby, monkeypatch, shared_data):
    """`-d Set5` with ./Set5 holding PNGs (a downloaded set) silently scored the data dir's Set5 (or said
    'not prepared'); only a ./Set5 with an HR/ subfolder counted as the user's."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "Set5").symlink_to(shared_data / "benchmarks" / "Set5")  # the data dir's prepared copy
    monkeypatch.setenv("SRTOOL_DATA_DIR", str(data_dir))
    work = tmp_path / "work"
    (work / "Set5").mkdir(parents=True)
    for name, crop in (("mine1", baby[:64, :64]), ("mine2", baby[64:128, :96])):
        Image.fromarray(crop).save(work / "Set5" / f"{name}.png")
    monkeypatch.chdir(work)
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", "Set5", "--csv", "r.csv", "-q")
    assert code == 0, err
    rows = (work / "r.csv").read_text().splitlines()
    assert [row.split(",")[3] for row in rows[1:]] == ["mine1", "mine2", "(mean)"]
    shutil.rmtree(work / "Set5")  # gone: the name means the data dir's copy again
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", "Set5", "--csv", "r.csv", "--overwrite", "-q")
    assert code == 0, err
    assert len((work / "r.csv").read_text().splitlines()) == 1 + 5 + 1


@pytest.mark.parametrize("with_lr", [False, True])
def test_two_hr_images_of_one_name_are_refused_naming_both(tmp_path, capsys, baby, with_lr):
    """HR a.png + a.jpg: without LR two result rows both named 'a' (which is which?); with LR/ a.jpg took
    a.png's LR and a.png was said to have 'no LR image'."""
    hr = tmp_path / "set" / "HR"
    hr.mkdir(parents=True)
    Image.fromarray(baby[:64, :64]).save(hr / "a.png")
    Image.fromarray(baby[64:128, 64:128]).save(hr / "a.jpg", quality=95)
    if with_lr:
        lr = tmp_path / "set" / "LR_bicubic" / "X4"
        lr.mkdir(parents=True)
        Image.fromarray(baby[:16, :16]).save(lr / "a.png")
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(tmp_path / "set"), "--no-progress")
    one_line(code, err, "two HR images named 'a'", "a.jpg", "a.png")


def test_figure_of_a_thin_region_is_drawn(tmp_path, capsys, baby):
    """--figure-region 0,0,256,8 on a 256x256 image: its box on the overview is under one pixel high, and
    PIL refused the rectangle after the whole evaluation: 'a model failed on ... (ValueError: y1 must be
    greater than or equal to y0)', exit 2, no figure."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:256, :256]).save(folder / "a.png")
    figure = tmp_path / "f.png"
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(folder), "--figure", str(figure),
                            "--figure-region", "0,0,256,8", "--no-progress", "-q")
    assert code == 0, err
    assert Image.open(figure).size[0] > 2 * 256  # the overview and the HR and bicubic strips


@pytest.mark.parametrize("layout", ["flat", "HR", "LR", "as-is"])
def test_a_broken_link_among_the_images_is_named_not_left_out(tmp_path, capsys, baby, layout):
    """A dangling link `head.png` (a moved benchmark folder) was silently left out: the mean was over
    fewer images than the set has, with nothing said."""
    root = tmp_path / "set"
    hr = root if layout in ("flat", "as-is") else root / "HR"
    hr.mkdir(parents=True)
    Image.fromarray(baby[:64, :64]).save(hr / "a.png")
    broken = hr / "head.png"
    if layout == "LR":
        lr = root / "LR_bicubic" / "X4"
        lr.mkdir(parents=True)
        Image.fromarray(baby[:16, :16]).save(lr / "a.png")
        broken = lr / "head.png"
    broken.symlink_to(tmp_path / "moved" / "head.png")
    command = ["--metric", "niqe"] if layout == "as-is" else ["-m", "bicubic"]
    code, err = run_cli_err(capsys, "eval", *command, "-d", str(root), "--no-progress")
    one_line(code, err, str(broken), "broken link")


def test_lowercase_x4_lr_folder_is_the_lr_not_ignored(tmp_path, capsys, shared_data):
    """LR_bicubic/x4 (lower case) was not seen: LR was generated from HR instead, silently (lr_source
    'generated'), so the dataset's own LR images were never used."""
    import json

    mirror = shared_data / "benchmarks" / "Set5-mirror-edge"  # its LR differs from a generated one (borders)
    for spelling in ("x4", "X4"):
        (tmp_path / spelling / "LR_bicubic" / spelling).mkdir(parents=True)
        (tmp_path / spelling / "HR").mkdir()
        (tmp_path / spelling / "HR" / "bird.png").symlink_to(mirror / "HR" / "bird.png")
        (tmp_path / spelling / "LR_bicubic" / spelling / "bird.png").symlink_to(mirror / "LR_bicubic" / "X4" / "bird.png")
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(tmp_path / "x4"), "-d", str(tmp_path / "X4"),
                            "-d", str(tmp_path / "X4" / "HR"), "--json", str(tmp_path / "r.json"), "--no-progress", "-q")
    assert code == 0, err
    lower, upper, generated = json.loads((tmp_path / "r.json").read_text())["results"]
    assert (lower["lr_source"], upper["lr_source"], generated["lr_source"]) == ("LR_bicubic/x4", "LR_bicubic/X4",
                                                                               "generated")
    assert lower["psnr"] == upper["psnr"] != generated["psnr"]


@pytest.mark.parametrize("option", ["--data", "--model", "--save-images", "--figure-region", "--json"])
def test_an_empty_option_value_is_refused(tmp_path, capsys, shared_data, monkeypatch, option):
    """`--save-images "$OUT"` with OUT unset wrote every SR image into the working folder; `-d ""` evaluated
    the working folder, `--figure-region ""` silently chose a region, `-m ""` loaded '.' as a model."""
    monkeypatch.chdir(tmp_path)
    args = {"--data": str(shared_data / "benchmarks" / "Set5"), "--model": "bicubic"}
    args[option] = ""
    extra = ["--figure", "f.png"] if option == "--figure-region" else []
    command = [arg for pair in args.items() for arg in pair]
    code, err = run_cli_err(capsys, "eval", *command, *extra, "--no-progress")
    one_line(code, err, option, "empty value")
    assert list(tmp_path.iterdir()) == []


def test_figure_image_given_as_its_file_name(tmp_path, capsys, baby):
    """`--figure-image a.png` (the file, as `ls` shows it) was 'no such image' after... nothing: the names
    results use are stems. The file name now names its image; an unknown one lists the images."""
    from srtool.evaluate import EvalOutputs, run_eval

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:64, :64]).save(folder / "a.png")
    Image.fromarray(baby[128:192, 128:192]).save(folder / "b.png")
    report = run_eval(["bicubic"], [folder], outputs=EvalOutputs(figure=tmp_path / "f.png", figure_image="b.png"),
                      progress=False)
    assert report.figure[:2] == ("photos", "b") and (tmp_path / "f.png").is_file()
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(folder), "--figure", str(tmp_path / "g.png"),
                            "--figure-image", "c.png", "--no-progress")
    one_line(code, err, "--figure-image c.png", "images: a, b")


@pytest.mark.parametrize("tile", ["-1", "3"])
def test_a_bad_tile_is_refused_with_bicubic_alone(capsys, shared_data, tile):
    """`-m default --tile -1` was refused, `-m bicubic --tile -1` ran (the value was never looked at)."""
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(shared_data / "benchmarks" / "Set5"),
                            "--tile", tile, "--no-progress")
    one_line(code, err, "--tile", f"got {tile}")


def test_python_evaluate_without_a_dataset_says_so():
    """`evaluate(model, [])` returned an empty report (no rows, no error), as if all was evaluated."""
    import srtool
    from srtool.errors import UserError
    from srtool.evaluate import evaluate

    with pytest.raises(UserError, match="no dataset"):
        evaluate(srtool.load_model("bicubic"), [], progress=False)


def with_failing_model(monkeypatch, above: int) -> None:
    """`srtool eval` loads bicubic and 'big-net', a bicubic that runs out of memory on LR taller than ``above``."""
    import srtool
    import srtool.evaluate

    bicubic = srtool.load_model("bicubic")

    class OutOfMemory(type(bicubic)):
        def __call__(self, lr):
            if lr.shape[0] > above:
                raise MemoryError("out of memory")
            return super().__call__(lr)

    failing = OutOfMemory.__new__(OutOfMemory)
    failing.__dict__.update(bicubic.__dict__, name="big-net")
    monkeypatch.setattr(srtool.evaluate, "load_models", lambda *args, **kwargs: [bicubic, failing])


def test_a_model_failing_on_an_image_makes_the_exit_status_1(tmp_path, capsys, baby, monkeypatch):
    """A model that failed on an image (out of memory...) left an incomplete mean and exit status 0, so
    `srtool eval ... && publish` went on with it. The table and files are still written; the status is 1."""
    import srtool
    import srtool.evaluate

    with_failing_model(monkeypatch, above=20)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:64, :64]).save(folder / "small.png")
    Image.fromarray(baby[:128, :128]).save(folder / "large.png")
    code, err = run_cli_err(capsys, "eval", "-d", str(folder), "--csv", str(tmp_path / "r.csv"), "--no-progress")
    assert code == 1, err
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert any(row.startswith("big-net,") and ",failed,MemoryError: out of memory," in row for row in rows), rows
    assert any("incomplete (1 failed)" in row for row in rows), rows
    monkeypatch.setattr(srtool.evaluate, "load_models", lambda *args, **kwargs: [srtool.load_model("bicubic")])
    code, err = run_cli_err(capsys, "eval", "-d", str(folder), "--no-progress")
    assert code == 0, err


def test_a_figure_that_cannot_be_drawn_after_the_work_still_shows_the_table(tmp_path, capsys, baby, monkeypatch):
    """A model failing on every image with --figure: 'no image was scored by every model' was raised after
    the whole evaluation, the table never shown (and exit 2, as for bad input)."""
    from cli_runner import run_cli

    with_failing_model(monkeypatch, above=0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:64, :64]).save(folder / "x.png")
    code = run_cli("eval", "-d", str(folder), "--figure", str(tmp_path / "f.png"), "--no-progress")
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "big-net" in out and "failed" in out, out
    assert "error: --figure: no image was scored by every model" in err


def test_labels_with_a_bar_keep_the_markdown_table_and_dots_stay_in_their_folder(tmp_path, capsys, baby):
    """`--label 'a|b'` split the Markdown row into one column too many; `--label ..` saved the SR images
    into the --save-images root itself (ROOT/<dataset>/../x.png), where other models' folders live."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:64, :64]).save(folder / "x.png")
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-l", "a|b", "-d", str(folder), "--markdown",
                            str(tmp_path / "r.md"), "--no-progress", "-q")
    assert code == 0, err
    rows = [line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| a")]
    assert rows and all(row.replace("\\|", "").count("|") == 4 for row in rows), rows  # model, PSNR, SSIM
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-l", "..", "-d", str(folder), "--save-images",
                            str(tmp_path / "sr"), "--no-progress", "-q")
    assert code == 0, err
    assert [p.relative_to(tmp_path / "sr").parts for p in (tmp_path / "sr").rglob("*.png")] == [("photos", "__", "x.png")]


def test_markdown_failed_row_with_one_metric_has_the_table_s_columns(tmp_path, baby):
    """With --metric psnr a failed image's row had three cells under a two-column header."""
    from srtool.eval_results import DatasetResult, EvalReport, ImageResult, ModelEntry
    from srtool.report import to_markdown

    result = DatasetResult("photos", "photos", 4, "y", "net", "sha", "generated",
                           [ImageResult("x", 30.0, None), ImageResult("y", None, None, error="MemoryError: out | of")])
    report = EvalReport("y", 4, [ModelEntry("net", "net", "sha", "net.safetensors", 4)], [result], "0", "now",
                        metrics=("psnr",))
    table = [line for line in to_markdown(report).splitlines() if line.startswith("| ") and "## " not in line][-4:]
    assert [row.replace("\\|", "").count("|") for row in table] == [3, 3, 3, 3], table  # image, PSNR
    assert "failed: MemoryError: out \\| of" in table[2]


def test_grayscale_lr_for_an_rgb_hr_is_refused_before_any_work(tmp_path, capsys, baby, monkeypatch):
    """The LR/HR kinds were compared only when the pair was reached: other images were scored and their
    --save-images files written first, then the run stopped."""
    import srtool.evaluate

    root = tmp_path / "set"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X4").mkdir(parents=True)
    for name, crop in (("a", baby[:64, :64]), ("b", baby[64:128, 64:128])):
        Image.fromarray(crop).save(root / "HR" / f"{name}.png")
        small = Image.fromarray(crop[::4, ::4])
        (small.convert("L") if name == "b" else small).save(root / "LR_bicubic" / "X4" / f"{name}.png")

    def reached(*args, **kwargs):
        raise AssertionError("evaluation started although the data is bad")

    monkeypatch.setattr(srtool.evaluate, "evaluate", reached)
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(root), "--save-images", str(tmp_path / "sr"),
                            "--no-progress")
    one_line(code, err, "b.png", "LR is grayscale but HR b.png is RGB")
    assert not (tmp_path / "sr").exists()


@pytest.mark.parametrize("obstacle", ["dataset-folder-is-a-file", "image-is-a-folder"])
def test_save_images_onto_a_file_or_folder_in_the_way_is_one_line(tmp_path, capsys, baby, obstacle):
    """ROOT/<dataset> being a file, or ROOT/<dataset>/<model>/x.png a folder: an internal error
    (NotADirectoryError / IsADirectoryError) after the evaluation had started."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:64, :64]).save(folder / "x.png")
    root = tmp_path / "sr"
    if obstacle == "dataset-folder-is-a-file":
        root.mkdir()
        (root / "photos").write_text("mine")
    else:
        (root / "photos" / "bicubic" / "x.png").mkdir(parents=True)
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(folder), "--save-images", str(root),
                            "--overwrite", "--no-progress")
    one_line(code, err, "--save-images", str(root / "photos" / "bicubic" / "x.png"))
    assert not list(root.rglob("*.tmp"))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a folder where no file can be made)")
def test_an_output_that_cannot_be_written_is_named_and_the_table_still_shown(tmp_path, capsys, baby):
    """--json (or --figure) into a folder where no file can be made (read-only, full disk): an internal
    error after the whole evaluation, and the table was never printed. --save-images: the same, mid-run."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:64, :64]).save(folder / "x.png")
    from cli_runner import run_cli

    code = run_cli("eval", "-m", "bicubic", "-d", str(folder), "--json", "/proc/r.json", "--csv",
                   str(tmp_path / "r.csv"), "--figure", "/proc/f.png", "--no-progress")
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "bicubic" in err + out and "internal error" not in err
    assert "error: --json /proc/r.json: cannot write" in err and "error: --figure /proc/f.png: cannot write" in err
    assert (tmp_path / "r.csv").is_file() and "JSON:" not in err
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(folder), "--save-images", "/proc/sr",
                            "--no-progress")
    one_line(code, err, "--save-images /proc/sr/photos/bicubic/x.png: cannot write")


def test_repeated_dataset_names_never_share_a_column(tmp_path, capsys, baby):
    """Folders a/x, b/x and c/x#2: the second was renamed x#2, the same name as the third, so the table's
    x#2 column showed one of them twice (cells are looked up by name) and the other was never shown."""
    import json

    folders = [tmp_path / "a" / "x", tmp_path / "b" / "x", tmp_path / "c" / "x#2"]
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True)
        Image.fromarray(baby[64 * k : 64 * k + 64, :64]).save(folder / "p.png")
    args = [arg for folder in folders for arg in ("-d", str(folder))]
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", *args, "--json", str(tmp_path / "r.json"),
                            "--markdown", str(tmp_path / "r.md"), "--no-progress", "-q")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["dataset"] for r in results] == ["x", "x#3", "x#2"]
    assert [r["dataset_path"] for r in results] == [str(f) for f in folders]
    row = next(line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| bicubic"))
    assert row.split(" | ")[1::2] == [f"{r['psnr']:.2f}" for r in results]


@pytest.mark.parametrize("option,name,root", [("--json", "sr", "sr"), ("--figure", "sr.png", "sr.png"),
                                              ("--markdown", "sr/photos", "sr"), ("--csv", "sr/photos/bicubic", "sr")])
def test_a_file_output_naming_a_save_images_folder_is_refused_up_front(tmp_path, capsys, baby, option, name, root):
    """`--json sr --save-images sr`: the images made `sr` a folder, and after the whole run the JSON was
    'kept' with 'appeared while eval ran (another run?)', a wrong reason, exit 1."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:64, :64]).save(folder / "x.png")
    code, err = run_cli_err(capsys, "eval", "-m", "bicubic", "-d", str(folder), option, str(tmp_path / name),
                            "--save-images", str(tmp_path / root), "--no-progress")
    one_line(code, err, f"{option} {tmp_path / name}", "--save-images makes", "folder of SR images")
    assert not (tmp_path / root).exists()


@pytest.mark.parametrize("command", [["-m", "bicubic"], ["--metric", "niqe"]])
def test_max_pixels_is_an_eval_option_and_checked_before_any_work(tmp_path, capsys, baby, monkeypatch, command):
    """An HR image over the decompression-bomb limit said 'raise it with --max-pixels', an option eval did
    not have (a 110-megapixel HR could not be evaluated at all), and only when the image was reached."""
    import srtool.evaluate

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(baby[:200, :200]).save(folder / "big.png")
    Image.fromarray(baby[:96, :200]).save(folder / "small.png")
    def refuse(*args, **kwargs):
        raise AssertionError("evaluation started although an image is over the limit")

    with monkeypatch.context() as patch:
        patch.setattr(srtool.evaluate, "evaluate", refuse)
        patch.setattr(srtool.evaluate, "score_images", refuse)
        code, err = run_cli_err(capsys, "eval", *command, "-d", str(folder), "--max-pixels", "30000", "--no-progress")
    one_line(code, err, "big.png", "200x200 = 40,000 pixels exceeds the limit of 30,000", "--max-pixels")
    code, err = run_cli_err(capsys, "eval", *command, "-d", str(folder), "--max-pixels", "40000", "--no-progress",
                            "-q")
    assert code == 0, err


def test_a_raised_max_pixels_reaches_the_completeness_check(tmp_path):
    """The up-front check that an image decodes (every format but PNG/JPEG is decoded in full) used the
    default limit whatever --max-pixels said: a 100.02-megapixel BMP was refused under --max-pixels 2e8."""
    from srtool.evaluate import open_dataset

    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("1", (10_001, 10_001)).save(folder / "scan.bmp")  # 12.5 MB on disk, 1 bit a pixel
    dataset = open_dataset(folder, 4, max_pixels=200_000_000)
    assert [pair.name for pair in dataset.pairs] == ["scan"]


def test_the_table_shows_whole_names_and_numbers_however_narrow_and_names_are_not_markup(tmp_path, capsys, baby):
    """Piped into a log (80 columns), four datasets were cut to 'Set5_…' and SSIMs to '0.81…'; a label
    'net[v2]' showed as 'net' (rich markup) and '[/]' ended the finished run in an internal MarkupError."""
    from cli_runner import run_cli

    names = [f"a_long_dataset_folder_name_{k}" for k in range(3)] + ["br[bold]x"]
    args = []
    for k, name in enumerate(names):
        (tmp_path / name).mkdir()
        Image.fromarray(baby[64 * k : 64 * k + 64, :64]).save(tmp_path / name / "p.png")
        args += ["-d", str(tmp_path / name)]
    code = run_cli("eval", "-m", "bicubic", "-m", "bicubic", "-l", "net[v2]", "-l", "[/]", *args,
                   "--csv", str(tmp_path / "r.csv"), "--figure", str(tmp_path / "f.png"), "--figure-image",
                   "br[bold]x/p", "--no-progress")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(br[bold]x/p, region" in err
    for name in names + ["net[v2]", "[/]"]:
        assert name in out, (name, out)
    means = [row.split(",") for row in (tmp_path / "r.csv").read_text().splitlines() if ",(mean)," in row]
    for row in means:
        assert f"{float(row[4]):.2f}" in out and f"{float(row[5]):.4f}" in out, (row, out)
    assert "…" not in out


def test_the_progress_bar_shows_a_dataset_name_as_it_is(capsys, monkeypatch):
    """The bar's description went through rich markup: a folder 'br[bold]x' showed as 'brx'."""
    from srtool.evaluate import _rich_progress

    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal's rendering, into pytest's capture
    bar = _rich_progress("br[bold]x x4", 1)
    bar.advance()
    bar.close()
    assert "br[bold]x x4" in capsys.readouterr().err
