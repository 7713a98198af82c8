"""The srtool command: help, presets, version, and the user-error path (one red line, exit 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from srtool import __version__


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srtool", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("prepare", "train", "eval", "upscale", "presets"):
        assert cmd in res.stdout


def test_version():
    res = run("--version")
    assert res.returncode == 0 and __version__ in res.stdout


def test_presets_show_esrgan_prints_resolved_values():
    res = run("presets", "show", "esrgan")
    assert res.returncode == 0
    for line in ('arch = "rrdbnet"', "n_blocks = 23", "growth = 32", "res_scale = 0.2", 'kind = "ragan"',
                 "weight = 0.005", "lr = 0.0001", "hr_crop = 128", "batch_size = 16", "iters_per_epoch = 5000"):
        assert line in res.stdout, line


def test_presets_show_with_override_and_list():
    res = run("presets", "show", "srgan", "--set", "model.generator.n_blocks=8")
    assert res.returncode == 0 and "n_blocks = 8" in res.stdout
    res = run("presets", "list")
    assert res.returncode == 0 and "esrgan" in res.stdout and "srresnet" in res.stdout


def test_user_error_is_one_red_line_exit_2_no_traceback():
    res = run("presets", "show", "esrgan", "--set", "train.lr=abc")
    assert res.returncode == 2
    assert "train.lr" in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback():
    res = run("--debug", "presets", "show", "nope")
    assert res.returncode == 2 and "Traceback" in res.stderr and "unknown preset" in res.stderr
