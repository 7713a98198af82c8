"""``srtool eval`` and :mod:`srtool.evaluate`: real datasets, output files, failures, bad input.

Most tests call the CLI in-process (``srtool.cli.main``) to avoid paying Python/torch start-up per
case; one test runs the real ``srtool`` process for the command the issue names.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from srtool import __version__
from srtool.cli import main
from srtool.errors import UserError
from srtool.evaluate import evaluate, evaluate_dataset, open_dataset, run_eval, EvalOutputs
from srtool.imageio import read_dataset_image, write_png
from srtool.engine import SRModel
from srtool.loading import bicubic_model, load_model
from srtool.metrics import compute_metrics
from srtool.report import to_csv, to_json_document, to_markdown
from srtool.resize import upscale


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``srtool ARGS`` in-process; returns (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def published(shared_data: Path, name: str) -> dict[str, tuple[float, float]]:
    with open(shared_data / "reference" / f"{name}_x4_published.csv", newline="") as fh:
        return {r["image"]: (float(r["psnr_y_bicubic"]), float(r["ssim_y_bicubic"])) for r in csv.DictReader(fh)}


def make_dataset(root: Path, images: dict[str, np.ndarray], lr: dict[str, np.ndarray] | None = None, scale: int = 4) -> Path:
    for name, hr in images.items():
        write_png(root / "HR" / f"{name}.png", hr)
    for name, low in (lr or {}).items():
        write_png(root / "LR_bicubic" / f"X{scale}" / f"{name}.png", low)
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A real (randomly initialised) SRResNet x4 exported the srtool way: a second, different model."""
    import torch

    from srtool.models.export import save_export
    from srtool.models.srresnet import SRResNet, SRResNetConfig

    torch.manual_seed(0)
    net = SRResNet(SRResNetConfig(n_feats=8, n_blocks=1, head_kernel=3, tail_kernel=3))
    return save_export(tmp_path_factory.mktemp("models") / "tiny.safetensors", net)


# ------------------------------------------------------------------------------ the command


def test_cli_process_prints_published_means_for_set5_and_set14(benchmarks_dir):
    res = subprocess.run(
        [sys.executable, "-m", "srtool", "eval", "--model", "bicubic",
         "--data", str(benchmarks_dir / "Set5"), "--data", str(benchmarks_dir / "Set14")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if "bicubic" in line)
    cells = [c.strip() for c in row.replace("┃", "│").split("│") if c.strip()]
    assert cells == ["bicubic", "28.42", "0.8101", "25.99", "0.7023"]
    assert "protocol y" in res.stdout and "Set5" in res.stdout and "Set14" in res.stdout


# ---------------------------------------------------------------------------------- output files


@pytest.fixture(scope="module")
def set5_run(benchmarks_dir, tiny_model, tmp_path_factory):
    """One eval of bicubic + a tiny network on Set5 with every output file requested."""
    out = tmp_path_factory.mktemp("eval_out")
    outputs = EvalOutputs(
        json=out / "r.json", csv=out / "r.csv", markdown=out / "r.md", save_images=out / "sr",
        figure=out / "fig.png",
    )
    report = run_eval(["bicubic", str(tiny_model)], [str(benchmarks_dir / "Set5")], device="cpu",
                      outputs=outputs, progress=False)
    return report, out


def test_json_has_per_image_values_means_protocol_version_identity(set5_run, shared_data, tiny_model):
    report, out = set5_run
    doc = json.loads((out / "r.json").read_text())
    assert doc["schema"] == "srtool-eval/2" and doc["srtool_version"] == __version__ and doc["protocol"] == "y"
    assert [m["label"] for m in doc["models"]] == ["bicubic", "tiny"]
    from srtool.atomic import sha256_file

    assert doc["models"][1]["identity"] == sha256_file(tiny_model) and doc["models"][0]["identity"] == "bicubic"
    bicubic = next(r for r in doc["results"] if r["model"] == "bicubic")
    assert bicubic["dataset"] == "Set5" and bicubic["n_images"] == 5 and bicubic["complete"] is True
    assert bicubic["lr_source"] == "LR_bicubic/X4"
    want = published(shared_data, "Set5")
    for image in bicubic["images"]:
        assert image["psnr"] == pytest.approx(want[image["name"]][0], abs=1e-3)
        assert image["ssim"] == pytest.approx(want[image["name"]][1], abs=1e-4)
        assert image["error"] is None
    assert bicubic["psnr"] == pytest.approx(np.mean([i["psnr"] for i in bicubic["images"]]))
    assert round(bicubic["psnr"], 3) == 28.418 and round(bicubic["ssim"], 4) == 0.8101
    tiny = next(r for r in doc["results"] if r["model"] == "tiny")
    assert tiny["model_identity"] == sha256_file(tiny_model) and tiny["psnr"] < 25  # random weights: poor


def test_csv_rows_per_image_and_mean(set5_run):
    report, out = set5_run
    rows = list(csv.DictReader(open(out / "r.csv", newline="")))
    assert len(rows) == 2 * (5 + 1)
    baby = next(r for r in rows if r["model"] == "bicubic" and r["image"] == "baby")
    assert float(baby["psnr"]) == pytest.approx(31.771053, abs=1e-3) and baby["status"] == "ok"
    assert baby["protocol"] == "y" and baby["srtool_version"] == __version__ and baby["model_identity"] == "bicubic"
    mean = next(r for r in rows if r["model"] == "bicubic" and r["image"] == "(mean)")
    assert round(float(mean["psnr"]), 3) == 28.418 and mean["status"] == "complete"


def test_markdown_table_and_per_image_sections(set5_run):
    report, out = set5_run
    text = (out / "r.md").read_text()
    assert "protocol y" in text and f"srtool {__version__}" in text
    assert "| bicubic | 28.42 | 0.8101 |" in text
    assert "| butterfly | 22.0992 | 0.73677" in text  # per-image section (published 22.099166 / 0.736772)
    assert "identity `bicubic`" in text and "## tiny on Set5" in text


def test_saved_images_are_the_model_outputs(set5_run, benchmarks_dir):
    report, out = set5_run
    files = sorted(p.relative_to(out / "sr").as_posix() for p in (out / "sr").rglob("*") if p.is_file())
    assert files == sorted(f"Set5/{m}/{n}.png" for m in ("bicubic", "tiny") for n in ("baby", "bird", "butterfly", "head", "woman"))
    lr = read_dataset_image(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / "bird.png")
    assert np.array_equal(read_dataset_image(out / "sr" / "Set5" / "bicubic" / "bird.png"), upscale(lr, 4))


def test_figure_crops_come_from_the_chosen_region_and_labels_are_drawn(set5_run, benchmarks_dir, tiny_model):
    from PIL import Image

    from srtool.figure import comparison_figure, text_block

    report, out = set5_run
    dataset, image, region = report.figure
    # Default image: largest PSNR spread between the two models.
    spreads = {}
    for name in ("baby", "bird", "butterfly", "head", "woman"):
        scores = [next(i.psnr for i in r.images if i.name == name) for r in report.results]
        spreads[name] = max(scores) - min(scores)
    assert (dataset, image) == ("Set5", max(spreads, key=spreads.get))
    fig = np.asarray(Image.open(out / "fig.png").convert("RGB"))
    hr = read_dataset_image(benchmarks_dir / "Set5" / "HR" / f"{image}.png")
    lr = read_dataset_image(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / f"{image}.png")
    tiny = load_model(tiny_model, device="cpu")
    _, layout = comparison_figure(hr, lr, [bicubic_model(4), tiny], ["bicubic", "tiny"], 4, "y", region,
                                   title=f"Set5/{image}, x4, protocol y")
    assert fig.shape[1::-1] == layout.size
    x, y, w, h = region
    expected = [hr, upscale(lr, 4), tiny(lr)]
    assert len(layout.panel_boxes) == 3
    for (px, py, pw, ph), source in zip(layout.panel_boxes, expected):
        assert (pw, ph) == (w * layout.zoom, h * layout.zoom)
        shown = fig[py : py + ph : layout.zoom, px : px + pw : layout.zoom]
        assert np.array_equal(shown, source[y : y + h, x : x + w])
    # Labels: the model name and this image's PSNR/SSIM, drawn under each panel.
    psnr_tiny, ssim_tiny = compute_metrics(tiny(lr), hr, 4, "y")
    assert layout.labels[2] == ["tiny", f"{psnr_tiny:.2f} dB / {ssim_tiny:.4f}"]
    assert layout.labels[0][0] == "HR" and layout.labels[1][0] == "bicubic"
    for (lx, ly, lw, lh), lines in zip(layout.label_boxes, layout.labels):
        drawn = fig[ly : ly + lh, lx : lx + lw]
        assert np.array_equal(drawn, np.asarray(text_block(lines, lw)))
        assert (drawn < 128).any()  # not blank


def test_auto_region_is_where_outputs_differ_most():
    from srtool.figure import pick_region

    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    a = hr.copy()
    b = hr.copy()
    b[120:170, 30:80] = 255 - b[120:170, 30:80]  # the models disagree only here
    x, y, w, h = pick_region(hr, [a, b], side=50, border=4)
    assert (x, y, w, h) == (30, 120, 50, 50)
    # Identical outputs: fall back to the error against HR.
    c = hr.copy()
    c[10:40, 150:180] = 0
    assert pick_region(hr, [c, c], side=30, border=4) == (150, 10, 30, 30)


def test_figure_with_given_region_and_image(benchmarks_dir, tmp_path, capsys):
    from PIL import Image

    code, out, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"),
                         "--figure", str(tmp_path / "f.png"), "--figure-image", "Set5/bird", "--figure-region", "100,60,40,30")
    assert code == 0, err
    assert "Set5/bird, region 100,60,40,30" in err
    fig = np.asarray(Image.open(tmp_path / "f.png").convert("RGB"))
    hr = read_dataset_image(benchmarks_dir / "Set5" / "HR" / "bird.png")
    zoom = 256 // 40
    from srtool.figure import MARGIN

    # The first crop panel (HR) follows the overview; find it by its known geometry.
    top = MARGIN + 18 + 8
    left = MARGIN + round(hr.shape[1] * 30 * zoom / hr.shape[0]) + MARGIN
    shown = fig[top : top + 30 * zoom : zoom, left : left + 40 * zoom : zoom]
    assert np.array_equal(shown, hr[60:90, 100:140])


# ------------------------------------------------------------------------------------ behaviours


def test_generated_lr_matches_published_lr(benchmarks_dir, tmp_path):
    """Without LR_bicubic/, LR is made with the MATLAB recipe: for Set5 that is the published LR, bit for bit."""
    (tmp_path / "Set5gen" / "HR").mkdir(parents=True)
    for p in (benchmarks_dir / "Set5" / "HR").iterdir():
        (tmp_path / "Set5gen" / "HR" / p.name).symlink_to(p)
    generated = evaluate_dataset(bicubic_model(4), tmp_path / "Set5gen", progress=False)
    given = evaluate_dataset(bicubic_model(4), benchmarks_dir / "Set5", progress=False)
    assert generated.lr_source == "generated" and given.lr_source == "LR_bicubic/X4"
    assert [(i.name, i.psnr, i.ssim) for i in generated.images] == [(i.name, i.psnr, i.ssim) for i in given.images]
    assert generated.name == "Set5gen" and round(generated.psnr, 3) == 28.418


def test_dataset_by_name_resolves_from_the_data_dir(benchmarks_dir, tmp_path, monkeypatch):
    (tmp_path / "Set14").symlink_to(benchmarks_dir / "Set14")
    monkeypatch.setenv("SRTOOL_DATA_DIR", str(tmp_path))
    result = evaluate_dataset(bicubic_model(4), "Set14", progress=False)
    assert result.name == "Set14" and len(result.images) == 14
    assert (round(result.psnr, 3), round(result.ssim, 4)) == (25.993, 0.7023)


def test_protocols_pass_through_to_scores_and_title(benchmarks_dir, capsys):
    code, out, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "--protocol", "rgb")
    assert code == 0, err
    assert "protocol rgb" in out and "28.42" not in out
    rgb = evaluate_dataset(bicubic_model(4), benchmarks_dir / "Set5", protocol="rgb", progress=False)
    y_float = evaluate_dataset(bicubic_model(4), benchmarks_dir / "Set5", protocol="y-float", progress=False)
    assert f"{rgb.psnr:.2f}" in out and rgb.psnr < 28.0
    assert y_float.psnr != pytest.approx(28.4177, abs=1e-3)


class _OutOfMemoryOnLargeImages(SRModel):
    """Bicubic that fails like a GPU running out of memory on images with more than 100 LR rows."""

    def __call__(self, image):
        if image.shape[0] > 100:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(image)


def test_model_failing_on_one_image_is_reported_not_skipped(benchmarks_dir):
    failing = _OutOfMemoryOnLargeImages(name="fragile", scale=4, identity="test")
    report = evaluate([bicubic_model(4), failing], [benchmarks_dir / "Set5"], progress=False)
    fragile = next(r for r in report.results if r.model == "fragile")
    assert [i.name for i in fragile.images] == ["baby", "bird", "butterfly", "head", "woman"]
    assert [i.name for i in fragile.failed] == ["baby"] and "out of memory" in fragile.failed[0].error
    assert not fragile.complete and math.isfinite(fragile.psnr)
    doc = to_json_document(report)
    entry = next(r for r in doc["results"] if r["model"] == "fragile")
    assert entry["n_failed"] == 1 and entry["complete"] is False and entry["images"][0]["psnr"] is None
    assert "fragile,test,Set5,baby,,,failed,RuntimeError: CUDA out of memory" in to_csv(report)
    md = to_markdown(report)
    assert "| baby | failed |" in md and "fragile failed on Set5/baby" in md
    from rich.console import Console

    from srtool.report import print_report

    console = Console(width=200, record=True)
    print_report(report, console)
    text = console.export_text()
    assert f"{fragile.psnr:.2f}*" in text and "fragile failed on Set5/baby" in text
    with pytest.raises(RuntimeError, match="out of memory"):  # strict (training validation): raised instead
        evaluate_dataset(failing, benchmarks_dir / "Set5", progress=False, strict=True)


def test_refuses_to_overwrite_outputs(benchmarks_dir, tmp_path, capsys):
    (tmp_path / "r.json").write_text("mine")
    code, out, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "--json", str(tmp_path / "r.json"))
    assert code == 2 and "r.json" in err and "--overwrite" in err and (tmp_path / "r.json").read_text() == "mine"
    code, out, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "--json", str(tmp_path / "r.json"), "--overwrite")
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["protocol"] == "y"


# ------------------------------------------------------------------------------------- bad input


def _one_red_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_bad_missing_hr_folder(tmp_path, capsys):
    (tmp_path / "noHR" / "images").mkdir(parents=True)
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", str(tmp_path / "noHR"))[::2], "noHR", "HR/")


def test_bad_empty_dataset(tmp_path, capsys):
    (tmp_path / "empty" / "HR").mkdir(parents=True)
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", str(tmp_path / "empty"))[::2], "no images", "empty")


def test_bad_lr_not_exactly_hr_over_scale(tmp_path, capsys):
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    make_dataset(tmp_path / "ds", {"a": hr}, {"a": hr[:15, :16]})
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", str(tmp_path / "ds"))[::2], "a.png", "16x15", "HR/4")


def test_bad_model_scale_differs_from_dataset_scale(benchmarks_dir, tmp_path, capsys):
    import torch

    from srtool.models.export import save_export
    from srtool.models.srresnet import SRResNet, SRResNetConfig

    torch.manual_seed(0)
    x2 = save_export(tmp_path / "x2.safetensors", SRResNet(SRResNetConfig(scale=2, n_feats=8, n_blocks=1)))
    code, _, err = cli(capsys, "eval", "--model", str(x2), "--data", str(benchmarks_dir / "Set5"), "--device", "cpu")
    _one_red_line(code, err, "x2", "x4", "Set5")
    code, _, err = cli(capsys, "eval", "--model", "bicubic", "--scale", "3", "--data", str(benchmarks_dir / "Set5"))
    _one_red_line(code, err, "x3", "x4")


def test_bad_unreadable_image(tmp_path, capsys):
    rng = np.random.default_rng(0)
    make_dataset(tmp_path / "ds", {"good": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)})
    (tmp_path / "ds" / "HR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", str(tmp_path / "ds"))[::2], "broken.png")


def test_bad_missing_lr_for_an_hr_image(tmp_path, capsys):
    rng = np.random.default_rng(0)
    hr = {n: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for n in ("a", "b")}
    make_dataset(tmp_path / "ds", hr, {"a": hr["a"][::4, ::4]})
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", str(tmp_path / "ds"))[::2], "b.png", "no LR")


def test_bad_options(benchmarks_dir, tmp_path, capsys):
    set5 = str(benchmarks_dir / "Set5")
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", "NoSuchSet")[::2], "NoSuchSet")
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", set5, "--protocol", "ycbcr")[::2], "ycbcr")
    _one_red_line(*cli(capsys, "eval", "--model", str(tmp_path / "nope.pth"), "--data", set5)[::2], "nope.pth")
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", set5, "--figure", str(tmp_path / "f.png"),
                       "--figure-region", "250,0,40,40", "--figure-image", "bird")[::2], "--figure-region", "bird")
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", set5, "--figure", str(tmp_path / "f.png"),
                       "--figure-image", "lena")[::2], "lena")
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", set5, "--figure-region", "1,2,3")[::2], "x,y,w,h")
    assert not (tmp_path / "f.png").exists()


def test_library_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="HR"):
        open_dataset(tmp_path, 4)


def test_bad_image_too_small_to_score(tmp_path, capsys):
    make_dataset(tmp_path / "ds", {"tiny": np.zeros((16, 16, 3), np.uint8)})
    _one_red_line(*cli(capsys, "eval", "--model", "bicubic", "--data", str(tmp_path / "ds"))[::2], "tiny.png", "too small")
