"""Everyday shell habits with `srtool upscale`: running it a second time (nothing to do is answered
without torch or the model, with exactly the decisions and refusals of a run that loads it), and
stopping it with Ctrl-C (one line says so)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from safetensors.numpy import save_file

from srtool.loading import load_model
from srtool.model_files import scale_without_loading
from srtool.model_zoo import zoo_entry

from test_eval import tiny_model  # noqa: F401 -- a fixture
from test_upscale_paths import photos, run_cli, tree  # noqa: F401 -- photos is a fixture

# Runs the CLI in a fresh process and reports, after it, whether torch was imported.
PROBE = """
import sys
from srtool.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = int(exc.code or 0)
print(f"exit={code} torch={'torch' in sys.modules}")
"""


def probe(args: list[str]) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    return (lines[-1] if lines else f"no report (exit {done.returncode})"), done.stderr


def test_rerun_with_every_output_in_place_needs_neither_torch_nor_the_model(photos, tmp_path):
    """The bundled model, as `make demo` runs it: the second run skips both images without importing
    torch; with one output deleted, the next run loads the model and writes only that one."""
    out = tmp_path / "out"
    command = ["upscale", str(photos), "-o", str(out), "--no-progress"]
    status, err = probe(command)
    assert status == "exit=0 torch=True", err
    first = tree(out)
    assert sorted(first) == ["baby_x4.png", "bird_x4.png"]
    status, err = probe(command)
    assert status == "exit=0 torch=False", err
    assert tree(out) == first
    assert err.count("skipped:") == 2 and "exists (use --overwrite)" in err
    (out / "bird_x4.png").unlink()
    status, err = probe(command)
    assert status == "exit=0 torch=True", err
    again = tree(out)
    assert again["baby_x4.png"] == first["baby_x4.png"] and "bird_x4.png" in again
    assert err.count("skipped:") == 1


def test_scale_without_loading_is_the_scale_loading_gives(tmp_path, tiny_model):  # noqa: F811
    """bicubic, the bundled model, an srtool export as a file and as a run directory, a named model:
    the scale load_model would give; anything only loading can judge (a plain safetensors state
    dict, a broken file, a missing path, a disagreeing --scale): None, so the caller loads it."""
    assert scale_without_loading("bicubic") == 4
    assert scale_without_loading("bicubic", 2) == 2
    assert scale_without_loading("bicubic", 1) is None  # loading refuses it, in its own words
    assert scale_without_loading("default") == load_model("default").scale == 4
    assert scale_without_loading(tiny_model) == load_model(str(tiny_model)).scale == 4
    run = tmp_path / "run"
    (run / "exports").mkdir(parents=True)
    shutil.copy(tiny_model, run / "exports" / "last.safetensors")
    assert scale_without_loading(run) == 4
    assert scale_without_loading(tiny_model, 4) == 4
    assert scale_without_loading(tiny_model, 2) is None
    assert scale_without_loading(tiny_model, 7) is None
    assert scale_without_loading("realesrgan-x2plus") == zoo_entry("realesrgan-x2plus").scale == 2
    import numpy as np

    save_file({"conv.weight": np.zeros((4, 3, 3, 3), np.float32)}, str(tmp_path / "plain.safetensors"))
    assert scale_without_loading(tmp_path / "plain.safetensors") is None
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 64)
    assert scale_without_loading(tmp_path / "broken.safetensors") is None
    assert scale_without_loading(tmp_path / "missing.safetensors") is None
    assert scale_without_loading(tmp_path) is None  # a folder that is not a run


def test_rerun_keeps_every_refusal(photos, tmp_path, capsys, tiny_model):  # noqa: F811
    """With every output in place, a bad option is still one line and exit 2, as on a first run."""
    out = tmp_path / "out"
    code, err = run_cli(["upscale", str(photos), "-o", str(out), "-m", str(tiny_model), "--no-progress"], capsys)
    assert code == 0, err
    before = tree(out)
    for extra, words in ((["--tile", "5"], "--tile"), (["--tile-pad", "-1"], "--tile-pad"),
                         (["--alpha", "foo"], "--alpha"), (["--scale", "2"], "disagrees"),
                         (["--device", "cuda:9"], "--device"), (["--precision", "fp17"], "precision")):
        code, err = run_cli(["upscale", str(photos), "-o", str(out), "-m", str(tiny_model), *extra], capsys)
        assert code == 2 and words in err and "Traceback" not in err, (extra, err)
    code, err = run_cli(["upscale", str(photos), "-o", str(out), "-m", str(tiny_model)], capsys)
    assert code == 0 and err.count("skipped:") == 2
    assert tree(out) == before


def test_ctrl_c_in_a_command_says_interrupted(photos, tmp_path, capsys, monkeypatch):
    """Typer turns a KeyboardInterrupt inside a command into a bare exit 130; srtool still says so."""
    import srtool.upscale

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(srtool.upscale, "run_batch_sharded", interrupted)
    code, err = run_cli(["upscale", str(photos), "-o", str(tmp_path / "out"), "-m", "bicubic"], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err


def test_a_folder_planned_before_loading_is_not_planned_again(photos, tmp_path, capsys, monkeypatch):
    """With work to do, the plan made before the model loads is the one run (the model's scale is the
    header's): a large folder's paths are resolved and its markers read once."""
    import srtool.upscale_jobs as upscale_jobs

    calls = []
    real = upscale_jobs.plan_jobs
    monkeypatch.setattr(upscale_jobs, "plan_jobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, err = run_cli(["upscale", str(photos), "-o", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 0 and sorted(tree(tmp_path / "out")) == ["baby_x4.png", "bird_x4.png"], err
    assert len(calls) == 1


def test_output_names_taken_by_a_dangling_link_or_a_file_in_the_way(photos, tmp_path, capsys):
    """A dangling symlink under an output's name is the user's: skipped like any existing output (not
    a failure on every run). A file where the output's folder should be is reported as that, not as
    an output that "appeared after the batch started"."""
    (photos / "bird_x4.png").symlink_to(tmp_path / "nowhere.png")  # outputs beside the inputs
    code, err = run_cli(["upscale", str(photos), "-m", "bicubic"], capsys)
    assert code == 0 and "exists (use --overwrite)" in err and "written" in err, err
    assert (photos / "bird_x4.png").is_symlink() and (photos / "baby_x4.png").is_file()
    nested = tmp_path / "nested"
    (nested / "sub").mkdir(parents=True)
    shutil.copy(photos / "bird.png", nested / "sub" / "bird.png")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sub").write_text("a file, not a folder")
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(["upscale", str(nested), "-r", "-o", str(blocked), "-m", "bicubic", *extra], capsys)
        assert code == 1 and "failed:" in err and "appeared" not in err, err
        assert (blocked / "sub").read_text() == "a file, not a folder"
