"""Hostile preset files are one-line user errors (exit 2); what `presets show` prints loads back unchanged;
the numeric fields a run would only reject mid-way (seed, Adam betas) are validated with their range."""

from __future__ import annotations

import pytest

from cli_runner import run_cli
from srtool.config import dump_toml, load_preset, preset_names
from srtool.errors import UserError
from srtool.tomlio import toml_string


def one_line_error(capsys, *args: str) -> str:
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "content,expected",
    [
        ('name = "caf\xe9"\n'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 11)"),
        (bytes(range(256)) * 4, "not UTF-8 text (byte 0x80"),
        (b"name = \"x\"\x00\n", "invalid TOML"),
        (b"a = " + b"[" * 100_000 + b"]" * 100_000, "nested more than 64 levels"),
        (b"a = " + b"{b=" * 100_000 + b"1" + b"}" * 100_000, "nested more than 64 levels"),
        (b"[" + b"a." * 100_000 + b"a]\nx = 1\n", "dotted key with more than 64 parts"),
        (b"a" + b".a" * 100_000 + b" = 1\n", "dotted key with more than 64 parts"),
    ],
    ids=["latin1", "binary", "nul", "deep-arrays", "deep-inline-tables", "deep-table-header", "deep-dotted-key"],
)
def test_hostile_preset_files_are_one_line_user_errors(tmp_path, capsys, content, expected):
    path = tmp_path / "hostile.toml"
    path.write_bytes(content)
    for command in (("presets", "show", str(path)), ("train", "--preset", str(path), "--out", str(tmp_path / "run"))):
        err = one_line_error(capsys, *command)
        assert str(path) in err and expected in err
    assert not (tmp_path / "run").exists()


def test_deep_set_override_is_a_one_line_error(capsys):
    err = one_line_error(capsys, "presets", "show", "srresnet", "--set", "train.betas=" + "[" * 50_000)
    assert "--set train.betas" in err and "nested" in err


def test_a_bom_and_crlf_file_still_loads(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + dump_toml(load_preset("srresnet")).replace("\n", "\r\n").encode())
    assert load_preset(str(path)) == load_preset("srresnet")


STRANGE = 'line one\nline "two"\t\\ tab\r\x00\x01\x1b[31m\x7f \u00e9\u4e2d \U0001f600'


@pytest.mark.parametrize("name", [*preset_names(), "esrgan+strange"])
def test_presets_show_output_round_trips_through_preset_file(tmp_path, capsys, name):
    base, _, strange = name.partition("+")
    overrides = []
    if strange:  # --set values are TOML literals: a basic string with escapes reaches the model unchanged
        overrides = [f"description={toml_string(STRANGE)}", "name=\"ctrl\\u0007name\""]
    assert run_cli("presets", "show", base, *[a for o in overrides for a in ("--set", o)]) == 0
    shown = capsys.readouterr().out
    path = tmp_path / "shown.toml"
    path.write_text(shown, encoding="utf-8")
    assert run_cli("presets", "show", str(path)) == 0
    assert capsys.readouterr().out == shown
    loaded = load_preset(str(path))
    assert loaded == load_preset(base, overrides)
    if strange:
        assert loaded.description == STRANGE and loaded.name == "ctrl\x07name"


def test_seed_must_fit_numpy_seeding():
    assert load_preset("srresnet", ["train.seed=4294967295"]).train.seed == 2**32 - 1
    for value in ("4294967296", "18446744073709551616", "-1"):
        with pytest.raises(UserError, match=r"train\.seed: Input should be .* (4294967295|0)"):
            load_preset("srresnet", [f"train.seed={value}"])


@pytest.mark.parametrize("value", ["(2.0,3.0)", "[2.0, 3.0]", "[nan, 0.9]", "[0.9, inf]", "[-0.1, 0.9]", "[0.9, 1.0]"])
def test_adam_betas_are_range_checked(value):
    with pytest.raises(UserError) as exc:
        load_preset("srresnet", [f"train.betas={value}"])
    assert "train.betas" in str(exc.value) and "[0, 1)" in str(exc.value)
    assert load_preset("srresnet", ["train.betas=[0.0, 0.99]"]).train.betas == (0.0, 0.99)


def test_no_validation_is_an_empty_list_and_the_error_says_so():
    assert load_preset("srresnet", ["validation.datasets=[]"]).validation.datasets == []
    with pytest.raises(UserError, match=r"validation\.datasets: .*or \[\] for no validation"):
        load_preset("srresnet", ["validation.datasets="])
