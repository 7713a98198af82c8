"""Shell habits of Real-ESRGAN and common CLIs: -h, -q, --no-progress, --tile 0, -s, --suffix out, --fp32,
--ext, -i, option hints, argument errors before torch is imported, --debug anywhere, eval --json -, user
metavars in help, shell completion, eval on a flat HR folder with --label, prepare's table in 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli, run_cli_err

REPO = Path(__file__).resolve().parents[1]


def srtool(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srtool", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "100", **(env or {})}, **kw)


def no_torch(*args: str) -> tuple[int, bool, str]:
    """Run the CLI in a fresh interpreter; (exit status, whether torch got imported, stderr)."""
    code = ("import sys\nfrom srtool.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('EXIT', e.code, 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    _, status, torch_loaded = res.stdout.strip().splitlines()[-1].split()
    return int(status), torch_loaded == "True", res.stderr


COMMANDS = [["upscale"], ["eval"], ["train"], ["prepare", "folder"], ["prepare", "benchmark"], ["prepare", "div2k"],
            ["presets", "show"], ["presets", "list"], ["presets"], ["prepare"], []]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_dash_h_is_help_everywhere_with_user_metavars(command, capsys):
    assert run_cli(*command, "-h") == 0
    out = capsys.readouterr().out
    assert "Usage: srtool" in out
    usage = next(line for line in out.splitlines() if "Usage: srtool" in line)
    assert "{" not in usage and "...]..." not in usage, usage  # DIR..., [INPUT]..., not {DIR}... or {INPUT...}...
    for python_type in ("<list[str]>", "<str>", "<int>", "<float>", "<bool>", "{INPUT...}", "INPUT......"):
        assert python_type not in out, (python_type, out)
    if len(command) == 2 or command in (["upscale"], ["eval"], ["train"]):  # every command (not the groups)
        assert "--quiet" in out and "-q" in out
    if command[:1] in (["upscale"], ["eval"], ["train"]) or command[:1] == ["prepare"] and len(command) == 2:
        assert "--no-progress" in out  # every command that shows progress


@pytest.mark.parametrize("args", [
    ["upscale", "--bogus", "x.png"],
    ["upscale", "x.png", "--quality", "0"],
    ["upscale", "x.png", "--tile", "-1"],
    ["upscale", "x.png", "--tile_pad", "4"],
    ["upscale", "x.png", "-n", "realesrgan-x4plus"],
    ["upscale", "x.png", "--face_enhance"],
    ["eval", "--json"],
    ["train", "--preset"],
    ["prepare", "folder", "--scale", "four", "d"],
])
def test_argument_errors_come_before_torch_is_imported(args):
    status, torch_loaded, err = no_torch(*args)
    assert status == 2 and not torch_loaded, err
    assert "Traceback" not in err


def test_foreign_spellings_name_the_srtool_option(capsys):
    assert run_cli("upscale", "a.png", "--tile_pad", "4") == 2
    assert "--tile_pad: srtool spells it --tile-pad" in capsys.readouterr().err
    assert run_cli("upscale", "-n", "RealESRGAN_x4plus", "a.png") == 2
    assert "-n: srtool spells it --model/-m" in capsys.readouterr().err


def test_upscale_help_states_the_actual_defaults():
    """-h agrees with the code and the README: every --device choice, the CPU bf16 rule of --precision auto,
    and the suffix that follows --outscale (was: "mps" last, "fp32 on CPU", "_x<scale>")."""
    from typer.main import get_command

    from srtool.cli import app
    from srtool.devices import DEVICES

    helps = {p.name: p.help for p in get_command(app).commands["upscale"].params}
    assert all(name in helps["device"] for name in DEVICES), helps["device"]
    assert "bf16 for the bundled model" in helps["precision"], helps["precision"]
    assert "_x<outscale>" in helps["suffix"], helps["suffix"]


def test_debug_is_accepted_anywhere(tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    assert run_cli("upscale", missing, "--model", "bicubic", "--debug") == 2
    err = capsys.readouterr().err
    assert "No such option" not in err and "missing.png" in err and "Traceback" in err  # the traceback, then the line
    assert run_cli("upscale", missing, "--model", "bicubic") == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture
def photo(shared_data, tmp_path) -> Path:
    src = shared_data / "benchmarks" / "Set5" / "HR"
    image = sorted(src.iterdir())[0]
    folder = tmp_path / "in"
    folder.mkdir()
    with Image.open(image) as im:  # a small crop keeps the run cheap
        im.crop((0, 0, 64, 48)).save(folder / "photo.png")
    return folder / "photo.png"


def test_real_esrgan_habits_for_upscale(photo, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli("upscale", "-i", str(photo), "-o", str(out), "-m", "bicubic", "-s", "2", "--suffix", "out",
                   "--tile", "0", "--fp32", "--ext", "jpg", "-q", "--no-progress")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["photo_out.jpg"]
    with Image.open(out / "photo_out.jpg") as im:
        assert im.format == "JPEG" and im.size == (128, 96)  # -s 2: outscale 2 of the x4 bicubic
    assert captured.err == "" and captured.out == ""  # -q: nothing but errors and results
    # a suffix that starts with a separator is used as given
    assert run_cli("upscale", str(photo), "-o", str(out), "-m", "bicubic", "--suffix", "-big", "-q") == 0
    assert (out / "photo-big.png").is_file()


def test_tile_zero_is_one_pass_identical_to_the_untiled_network(photo, tmp_path):
    import torch

    from srtool.imageio import read_image
    from srtool.models import RRDBNet, RRDBNetConfig
    from srtool.models.export import save_export

    torch.manual_seed(0)
    net = RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=8, growth=4)).eval()
    model = save_export(tmp_path / "tiny.safetensors", net)
    assert run_cli("upscale", str(photo), "-o", str(tmp_path / "o"), "-m", str(model), "--tile", "0", "-q",
                   "--device", "cpu") == 0
    lr = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = (net(lr).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    got = read_image(tmp_path / "o" / "photo_x4.png").array.astype(np.float32)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1


def test_scale_mismatch_suggests_outscale(tmp_path, capsys):
    from srtool.models import RRDBNet, RRDBNetConfig
    from srtool.models.export import save_export

    model = save_export(tmp_path / "tiny.safetensors", RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=8, growth=4)))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    assert run_cli("upscale", str(tmp_path / "x.png"), "-m", str(model), "--scale", "2") == 2
    assert "use --outscale 2, or -s 2" in capsys.readouterr().err


def test_eval_scale_mismatch_offers_no_upscale_option(shared_data, tmp_path, capsys):
    """eval has no --outscale: its refusal of a --scale the model does not have must not suggest one."""
    from srtool.models import RRDBNet, RRDBNetConfig
    from srtool.models.export import save_export

    model = save_export(tmp_path / "tiny.safetensors", RRDBNet(RRDBNetConfig(n_blocks=1, n_feats=8, growth=4)))
    code, err = run_cli_err(capsys, "eval", "-m", str(model), "--scale", "2", "-d", str(shared_data / "benchmarks/Set5/HR"),
                            "--no-progress")
    assert code == 2 and "--scale 2 disagrees" in err and "x4" in err
    assert "outscale" not in err and "-s 2" not in err


def test_eval_csv_or_markdown_dash_is_stdout_not_a_file_named_dash(shared_data, tmp_path, capsys, monkeypatch):
    """`--csv -` / `--markdown -` go to stdout as `--json -` does (they used to write, and silently replace, a
    file named `-`); two of them on stdout at once are refused."""
    monkeypatch.chdir(tmp_path)
    set5 = str(shared_data / "benchmarks" / "Set5")
    for option, first_line in (("--csv", "model,model_identity,dataset,image,psnr,ssim"), ("--markdown", "# srtool eval")):
        code = run_cli("eval", "--data", set5, "-m", "bicubic", option, "-", "--no-progress")
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert captured.out.startswith(first_line) and "bicubic" in captured.err  # the table on stderr
        assert not (tmp_path / "-").exists()
    code, err = run_cli_err(capsys, "eval", "--data", set5, "-m", "bicubic", "--json", "-", "--csv", "-")
    assert code == 2 and "--json -" in err and "--csv -" in err and "standard output" in err


def test_eval_flat_folder_labels_and_json_to_stdout(shared_data, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in sorted((shared_data / "benchmarks" / "Set5" / "HR").iterdir())[:2]:
        (flat / image.name).symlink_to(image)
    code = run_cli("eval", "--data", str(flat), "-m", "bicubic", "--label", "MATLAB bicubic", "--json", "-",
                   "--no-progress")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)  # stdout is the JSON document alone
    text = json.dumps(document)
    assert "MATLAB bicubic" in text and "flat" in text
    assert "MATLAB bicubic" in captured.err  # the table went to stderr
    # --data on a prepared dataset gives the same numbers as the flat folder of its HR images
    assert run_cli("eval", "--data", str(shared_data / "benchmarks" / "Set5"), "-m", "bicubic", "--json", "-", "-q") == 0
    prepared = json.loads(capsys.readouterr().out)

    def per_image(doc):
        found = {}

        def walk(node):
            if isinstance(node, dict):
                if "psnr" in node and "error" in node:
                    found[node["name"]] = node["psnr"]
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(doc)
        return found

    flat_scores, prepared_scores = per_image(document), per_image(prepared)
    assert flat_scores and all(prepared_scores[k] == v for k, v in flat_scores.items())
    assert run_cli("eval", "--data", str(flat), "-m", "bicubic", "--label", "a", "--label", "b") == 2
    assert "--label given 2 time(s) for 1 model(s)" in capsys.readouterr().err


def test_prepare_summary_fits_80_columns(shared_data, tmp_path):
    res = srtool("prepare", "benchmark", str(shared_data / "benchmarks" / "Set5" / "HR"), "--out",
                 str(tmp_path / "a-rather-long-output-folder-name" / "Set5"), "--workers", "1", env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    table = [line for line in lines if line.strip()]
    assert table and all(len(line) <= 80 for line in lines), res.stdout
    assert any("Set5" in line and " 5 " in line for line in table)  # the row is on one line, not wrapped
    assert str(tmp_path / "a-rather-long-output-folder-name" / "Set5") in res.stdout.replace("\n", "")  # folded, whole


def test_shell_completion_installs(tmp_path):
    # the shell named on the line, not guessed from the parent processes (a detached run has no shell above it)
    env = {"HOME": str(tmp_path), "SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    res = srtool("--install-completion", "bash", env=env)
    assert res.returncode == 0, res.stderr + res.stdout
    installed = list(tmp_path.rglob("*srtool*"))
    assert installed and "complete" in installed[0].read_text()
    assert "srtool" in (tmp_path / ".bashrc").read_text()


def test_a_missing_input_is_named_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A mistyped path fails at once: the model (here one that cannot even be found) is never loaded."""
    import srtool.loading

    def never(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(srtool.loading, "load_model", never)
    code, err = run_cli_err(capsys, "upscale", str(tmp_path / "no-such-photo.png"), "-m", str(tmp_path / "no.pth"))
    assert code != 0 and "no-such-photo.png" in err and "Traceback" not in err


def test_binary_output_to_a_terminal_is_refused(photo, tmp_path, capsys, monkeypatch):
    """`srtool upscale photo.png -o -` typed at a terminal would print a PNG into it: refused, like gzip."""
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, err = run_cli_err(capsys, "upscale", str(photo), "-o", "-")
    assert code != 0 and "standard output is a terminal" in err


@pytest.mark.parametrize("command", ["upscale", "eval"])
def test_sigterm_unwinds_like_ctrl_c(tmp_path, benchmarks_dir, command):
    """`kill PID`, a service manager's stop or a scheduler's time limit sends SIGTERM: the process used to
    die on the spot (status -15, no word, a write in flight possibly left as a temporary); now it stops
    like Ctrl-C: files written are complete, no temporary is left, one line, exit status 143."""
    import signal
    import time

    lr = benchmarks_dir / "Set14" / "LR_bicubic" / "X4"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for copy in range(8):
        for name in ("baboon", "comic", "lenna", "zebra"):
            (inputs / f"{name}{copy}.png").symlink_to(lr / f"{name}.png")
    out = tmp_path / "out"
    if command == "upscale":
        args = ["upscale", str(inputs), "-o", str(out), "-j", "1", "--no-progress"]
        watch = out
    else:  # a flat folder of HR images, each saved upscaled as it is scored
        args = ["eval", "-m", "default", "-d", str(inputs), "--save-images", str(out), "-j", "1", "--no-progress"]
        watch = out
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "srtool", *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None and not any(watch.rglob("*.png")):
        time.sleep(0.02)
    assert child.poll() is None, child.communicate()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err and "internal error" not in err, err
    written = list(watch.rglob("*.png"))
    assert 0 < len(written) < 32, "the run was not stopped midway"
    assert not [p for p in watch.rglob("*") if p.name.startswith(".srtool-")]
    for path in written:
        with Image.open(path) as image:
            image.load()  # complete files only
