"""Fixed costs of the user's path (issue 13): work done before the first useful step of a command.

The timings themselves live in benchmarks/bench_startup.py; these tests pin the behaviour behind them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srtool.errors import UserError
from srtool.models import integrity
from srtool.models.export import read_state_dict

BUNDLED = Path(__file__).resolve().parents[1] / "srtool" / "weights" / "compact-x4.safetensors"


def _record_team_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = torch.isfinite

    def isfinite(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(torch.get_num_threads())
        return real(tensor)

    monkeypatch.setattr(integrity.torch, "isfinite", isfinite)
    return sizes


def test_weight_checks_run_on_one_thread_and_give_the_team_back(two_torch_threads, monkeypatch):
    """~150 tiny finiteness reductions per model file: on a two-thread team each one ends in a barrier
    that, on a busy machine, waits a whole time slice for the second thread (0.6-1.1 s per load of the
    5 MB bundled model on the shared VM, against 6 ms on one thread)."""
    state = read_state_dict(BUNDLED)
    sizes = _record_team_sizes(monkeypatch)
    integrity.validate_state_dict(state, BUNDLED)
    assert len(sizes) == sum(1 for v in state.values() if v.is_floating_point())
    assert set(sizes) == {1}
    assert torch.get_num_threads() == 2


def test_a_refused_file_still_gives_the_team_back(two_torch_threads, monkeypatch):
    state = {"conv_first.weight": torch.tensor([[[[float("nan")]]]])}
    sizes = _record_team_sizes(monkeypatch)
    with pytest.raises(UserError, match=r"'conv_first.weight' holds 1 non-finite value\(s\) \(NaN\)"):
        integrity.validate_state_dict(state, "bad.safetensors")
    assert sizes and set(sizes) == {1}
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("argv", [["presets", "list"], ["presets", "show", "esrgan"]])
def test_preset_commands_do_not_import_torch(argv):
    """Reading and checking presets needs pydantic only: torch's import (2-3 s, 600 MB) is not paid."""
    code = ("import sys; from srtool.cli import main; sys.argv = ['srtool', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_preset_validation_errors_come_before_torch():
    """A mistyped --set names the field without importing torch (the error is immediate)."""
    code = ("import sys\nfrom srtool.config import load_preset\nfrom srtool.errors import UserError\n"
            "try:\n    load_preset('srgan', ['model.generator.n_blocks=0'])\nexcept UserError as e:\n    print(e)\n"
            "assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model.generator.n_blocks" in done.stdout


def test_config_tables_pair_every_architecture_with_its_network():
    from srtool.models import configs, registry

    assert {k: v[0] for k, v in registry.GENERATORS.items()} == configs.GENERATOR_CONFIGS
    assert {k: v[0] for k, v in registry.DISCRIMINATORS.items()} == configs.DISCRIMINATOR_CONFIGS


def test_train_preset_error_is_reported_before_torch(tmp_path):
    """`srtool train --set` with a bad value: one line naming the field, exit 2, torch never imported."""
    code = ("import sys; from srtool.cli import main\n"
            "sys.argv = ['srtool', 'train', '--preset', 'srresnet', '--set', 'train.lr=abc', '--out', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert "exit 2" in done.stdout and "no torch" in done.stdout, (done.stdout, done.stderr[-2000:])
    assert "train.lr" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_loading_an_rrdbnet_export_does_not_import_torchs_compiler(tmp_path):
    """The file's tensor table is checked against the network its metadata describes, built on the meta
    device; RRDBNet's init of meta weights made torch import its compiler stack (torch._dynamo, sympy,
    ~160 MB): 1.2 s of every `--model` ESRGAN export's load, for nothing."""
    from srtool.models import RRDBNet, RRDBNetConfig
    from srtool.models.export import save_export

    export = save_export(tmp_path / "esrgan.safetensors", RRDBNet(RRDBNetConfig(n_blocks=2, n_feats=16, growth=8)))
    code = ("import sys, torch, srtool\n"
            f"srtool.load_model({str(export)!r}, device='cpu')\n"
            "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
