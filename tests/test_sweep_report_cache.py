"""``srtool sweep report`` keeps its scores in SWEEP_DIR/report-cache.json: a second report scores nothing.

The sweep folder is built by hand (a manifest and random-weight SRResNet exports: no training), the
scores are real (Set5 images, the srtool eval code). Evaluations are counted by wrapping
:func:`srtool.evaluate.evaluate_models` (every score of a report goes through it) and
:func:`srtool.figure.comparison_figure` (the figure runs its models on one image).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from srtool.evaluate import run_eval
from srtool.models import SRResNet, SRResNetConfig
from srtool.models.export import save_export
from srtool.sweep import SCHEMA, write_manifest
from srtool.sweep_cache import CACHE_NAME, CACHE_SCHEMA
from srtool.sweep_report import evaluate_sweep
from cli_runner import run_cli

POINTS = ["n_blocks=1,seed=0", "n_blocks=1,seed=1", "n_blocks=2,seed=0"]


def _export(path: Path, n_blocks: int, seed: int) -> Path:
    torch.manual_seed(seed)
    network = SRResNet(SRResNetConfig(n_blocks=n_blocks, n_feats=8))
    with torch.no_grad():
        for tensor in network.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn_like(tensor) * 0.02)
    return save_export(path, network)


def _dataset(root: Path, shared_data: Path, images=("bird", "head"), copy: bool = False) -> Path:
    for sub in ("HR", "LR_bicubic/X4"):
        (root / sub).mkdir(parents=True)
        for name in images:
            source = shared_data / "benchmarks" / "Set5" / sub / f"{name}.png"
            target = root / sub / f"{name}.png"
            shutil.copyfile(source, target) if copy else target.symlink_to(source)
    return root


@pytest.fixture
def sweep(tmp_path: Path, shared_data: Path) -> Path:
    """Three finished points (two rows: n_blocks=1 with seeds 0 and 1, n_blocks=2), scored on a Set5 subset."""
    out = tmp_path / "sweep"
    evals = _dataset(tmp_path / "Set5mini", shared_data)
    points = []
    for i, name in enumerate(POINTS):
        n_blocks, seed = int(name[9]), int(name[-1])
        _export(out / name / "exports" / "best.safetensors", n_blocks, 10 * i + seed)
        (out / name / "log.jsonl").write_text("".join(
            json.dumps({"kind": "train", "iter": it, "loss/pixel": 1.0 / (it + i + 1)}) + "\n" for it in range(1, 4)))
        values = {"model.generator.n_blocks": str(n_blocks), "train.seed": str(seed)}
        points.append({"name": name, "values": values, "status": "done",
                       "config": {"model": {"generator": {"n_blocks": n_blocks}}, "train": {"seed": seed}}})
    write_manifest(out, {"schema": SCHEMA, "eval": [str(evals)], "points": points})
    return out


@pytest.fixture
def counted(monkeypatch) -> dict[str, list]:
    """Every (model label, dataset) scored and every figure drawn, as the report asks for them."""
    import srtool.evaluate
    import srtool.figure

    calls: dict[str, list] = {"scored": [], "figures": []}
    evaluate_models, comparison_figure = srtool.evaluate.evaluate_models, srtool.figure.comparison_figure

    def counting_evaluate(models, dataset, *args, **kwargs):
        results = evaluate_models(models, dataset, *args, **kwargs)
        calls["scored"].extend((r.model, r.name) for r in results)
        return results

    def counting_figure(hr, lr, models, labels, *args, **kwargs):
        calls["figures"].append(list(labels))
        return comparison_figure(hr, lr, models, labels, *args, **kwargs)

    monkeypatch.setattr(srtool.evaluate, "evaluate_models", counting_evaluate)
    monkeypatch.setattr(srtool.figure, "comparison_figure", counting_figure)
    return calls


def _report(capsys, sweep: Path, *options: str) -> tuple[str, str]:
    assert run_cli("sweep", "report", str(sweep), "--no-progress", *options) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _outputs(sweep: Path) -> dict[str, bytes]:
    return {name: (sweep / name).read_bytes() for name in ("report.json", "report.csv", "report.md")}


def _values(sweep: Path) -> dict[str, list[float]]:
    rows = json.loads((sweep / "report.json").read_text())["rows"]
    return {point: [row["scores"][d]["psnr"]["values"][row["points"].index(point)]
                    for d in row["scores"]] for row in rows for point in row["points"]}


def test_a_second_report_scores_nothing_and_prints_the_same_table(sweep, counted, capsys):
    out, err = _report(capsys, sweep)
    assert sorted(counted["scored"]) == sorted((p, "Set5mini") for p in POINTS)
    assert counted["figures"] == [["n_blocks=1,seed=0", "n_blocks=2,seed=0"]]  # the first seed of each row
    assert "scored 3 point(s), 0 from" in err
    first, figures = _outputs(sweep), {n: (sweep / n).stat().st_mtime_ns for n in ("curves.png", "comparison.png")}
    counted["scored"].clear(), counted["figures"].clear()
    again, err = _report(capsys, sweep)
    assert counted == {"scored": [], "figures": []}
    assert again == out and _outputs(sweep) == first
    assert "scored 0 point(s), 3 from" in err and "not drawn again: curves.png, comparison.png" in err
    assert {n: (sweep / n).stat().st_mtime_ns for n in figures} == figures
    assert json.loads((sweep / CACHE_NAME).read_text())["schema"] == CACHE_SCHEMA
    # the cached numbers are srtool eval's, exactly
    export = sweep / POINTS[2] / "exports" / "best.safetensors"
    reference = run_eval([str(export)], [str(sweep.parent / "Set5mini")], "y", "cpu", progress=False).results[0]
    assert _values(sweep)[POINTS[2]] == [reference.psnr]
    # --no-cache scores and draws everything again, to the same numbers
    counted["scored"].clear()
    assert _report(capsys, sweep, "--no-cache")[0] == out and len(counted["scored"]) == 3 and counted["figures"]


def test_a_replaced_export_alone_is_scored_again_and_a_touched_one_is_not(sweep, counted, capsys):
    _report(capsys, sweep)
    before = _values(sweep)
    counted["scored"].clear(), counted["figures"].clear()
    _export(sweep / POINTS[1] / "exports" / "best.safetensors", 1, seed=99)  # retrained: other weights
    touched = sweep / POINTS[2] / "exports" / "best.safetensors"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 5_000_000_000))
    _, err = _report(capsys, sweep)
    assert counted["scored"] == [(POINTS[1], "Set5mini")]  # the touched export hashes the same: kept
    assert counted["figures"] == []  # seed 1 is in no panel: the figure is kept
    assert "scored 1 point(s), 2 from" in err
    after = _values(sweep)
    assert after[POINTS[0]] == before[POINTS[0]] and after[POINTS[2]] == before[POINTS[2]]
    assert after[POINTS[1]] != before[POINTS[1]]
    # the new hash of the touched file is recorded: the next report hashes nothing
    cache = json.loads((sweep / CACHE_NAME).read_text())
    assert cache["hashes"][str(touched)]["state"][1] == touched.stat().st_mtime_ns
    # a replaced export in a figure panel redraws the figure with it
    _export(sweep / POINTS[2] / "exports" / "best.safetensors", 2, seed=98)
    counted["scored"].clear()
    _report(capsys, sweep)
    assert counted["scored"] == [(POINTS[2], "Set5mini")]
    assert counted["figures"] == [["n_blocks=1,seed=0", "n_blocks=2,seed=0"]]


def test_what_can_move_a_number_scores_again_and_a_new_set_only_itself(sweep, counted, capsys, shared_data, tmp_path):
    _report(capsys, sweep)
    counted["scored"].clear()
    _report(capsys, sweep, "--metric", "psnr")  # other metrics
    assert len(counted["scored"]) == 3
    counted["scored"].clear()
    _report(capsys, sweep, "--protocol", "rgb")
    assert len(counted["scored"]) == 3
    # a second set: the first one's scores are kept, the new one scored
    other = _dataset(tmp_path / "Set5other", shared_data, images=("baby", "butterfly"), copy=True)
    counted["scored"].clear()
    _report(capsys, sweep, "--eval", str(sweep.parent / "Set5mini"), "--eval", str(other))
    assert sorted(counted["scored"]) == sorted((p, "Set5other") for p in POINTS)
    # an image of that set changed (here: its date) scores that set again, not the other
    hr = other / "HR" / "baby.png"
    os.utime(hr, ns=(hr.stat().st_atime_ns, hr.stat().st_mtime_ns + 1))
    counted["scored"].clear()
    _report(capsys, sweep, "--eval", str(sweep.parent / "Set5mini"), "--eval", str(other))
    assert sorted(counted["scored"]) == sorted((p, "Set5other") for p in POINTS)


@pytest.mark.parametrize("damage", ["garbage", "foreign", "truncated", "wrong types"])
def test_a_damaged_or_foreign_cache_is_ignored_and_rewritten(sweep, counted, capsys, damage):
    out, _ = _report(capsys, sweep)
    cache = sweep / CACHE_NAME
    good = cache.read_text()
    doc = json.loads(good)
    if damage == "garbage":
        cache.write_bytes(b"\x00\xff not json")
    elif damage == "foreign":
        cache.write_text(json.dumps({"schema": "someone-else/1", "hashes": {}, "scores": {}, "outputs": {}}))
    elif damage == "truncated":
        cache.write_text(good[: len(good) // 2])
    else:  # the right schema, entries that do not fit: each is scored again
        for entry in doc["scores"].values():
            entry["images"][0]["psnr"] = "high"
        doc["outputs"] = {"curves.png": []}
        cache.write_text(json.dumps(doc))
    counted["scored"].clear()
    again, err = _report(capsys, sweep)
    assert again == out and len(counted["scored"]) == 3
    assert "Traceback" not in err
    if damage != "wrong types":
        assert "report-cache.json: " in err and "ignored" in err
    assert json.loads(cache.read_text())["schema"] == CACHE_SCHEMA  # rewritten whole
    counted["scored"].clear()
    _report(capsys, sweep)
    assert counted["scored"] == []


def test_an_interrupted_report_leaves_the_previous_cache_whole(sweep, counted, capsys, monkeypatch):
    _report(capsys, sweep)
    before = (sweep / CACHE_NAME).read_bytes()
    _export(sweep / POINTS[0] / "exports" / "best.safetensors", 1, seed=77)
    import srtool.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(srtool.evaluate, "evaluate_models", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_sweep(sweep, progress=False)
    assert (sweep / CACHE_NAME).read_bytes() == before
    assert not [p for p in sweep.iterdir() if p.name.startswith(".srtool-")]


def test_a_sweep_folder_given_through_dotdot_keeps_its_export_hashes(sweep, counted, monkeypatch):
    """`srtool sweep report ../sweep`: the hashes were filed under one spelling of the path and looked up
    under another, so every report hashed every export again."""
    import srtool.sweep_cache

    work = sweep.parent / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    evaluate_sweep(Path("..") / "sweep", progress=False)
    assert len(json.loads((sweep / CACHE_NAME).read_text())["hashes"]) == 3
    hashed = []
    real = srtool.sweep_cache.sha256_file
    monkeypatch.setattr(srtool.sweep_cache, "sha256_file", lambda path: hashed.append(path) or real(path))
    counted["scored"].clear()
    evaluate_sweep(Path("..") / "sweep", progress=False)
    assert hashed == [] and counted["scored"] == []


def test_other_scoring_code_scores_again(sweep, counted, capsys, monkeypatch):
    """The version string does not move when a metric or the engine is fixed; the code's digest does."""
    import srtool.sweep_cache

    _report(capsys, sweep)
    counted["scored"].clear()
    monkeypatch.setattr(srtool.sweep_cache, "code_revision", lambda: "other code")
    _report(capsys, sweep)
    assert len(counted["scored"]) == 3


def test_a_damaged_figure_region_is_drawn_again_not_an_internal_error(sweep, counted, capsys):
    _report(capsys, sweep)
    cache = sweep / CACHE_NAME
    doc = json.loads(cache.read_text())
    doc["outputs"]["comparison.png"]["region"] = ["x", 1, 2, 3]
    cache.write_text(json.dumps(doc))
    counted["figures"].clear()
    _, err = _report(capsys, sweep)
    assert "internal error" not in err and counted["figures"] == [["n_blocks=1,seed=0", "n_blocks=2,seed=0"]]
