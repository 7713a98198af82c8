"""Image lanes (srtool upscale / srtool eval on the CPU) under bad input and shared state: workers=
validated from Python as on the command line; the LPIPS HR cache per lane, never two images' at once,
none after the run; outputs that appear while a batch runs are never replaced without --overwrite;
stdin on a terminal (a read that Ctrl-C cannot end) refused up front."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from srtool.errors import UserError
from srtool.evaluate import evaluate_models, run_eval
from srtool.loading import bicubic_model

from test_perceptual import _random_backbone, weights_dir  # noqa: F401 -- a fixture
from test_upscale import _write, nearest_model

BAD_WORKERS = [0, -2, True, 2.5, "2", None]


@pytest.mark.parametrize("workers", BAD_WORKERS)
def test_eval_workers_must_be_a_whole_number_of_at_least_one(benchmarks_dir, workers):
    """``workers=0`` (or -2, True, 2.5, "2") from Python was taken silently as one lane, or failed with
    a TypeError traceback; the CLI refuses ``-j 0``. Now a UserError names the value before any work."""
    if workers is None:  # None is evaluate_models' own default (up to 4 lanes), never an error
        assert evaluate_models([bicubic_model(4)], benchmarks_dir / "Set5", progress=False, workers=None)[0].complete
        return
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):
        evaluate_models([bicubic_model(4)], benchmarks_dir / "Set5", progress=False, workers=workers)
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):  # before any model loads
        run_eval([str(benchmarks_dir / "no-such-model.safetensors")], [benchmarks_dir / "Set5"], progress=False,
                 workers=workers)


@pytest.mark.parametrize("workers", BAD_WORKERS)
def test_upscale_workers_must_be_a_whole_number_of_at_least_one(tmp_path, workers, two_torch_threads):
    """The same for UpscaleOptions (its workers has no None default): refused by check_request before the
    model loads, and by run_batch when it is called on its own (nothing written)."""
    from srtool.upscale import run_batch
    from srtool.upscale_jobs import UpscaleOptions, check_request, plan_jobs

    src = _write(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8))
    opts = UpscaleOptions(output=str(tmp_path / "out"), workers=workers)
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):
        check_request([str(src)], opts)  # before the model loads
    model = nearest_model()
    good = UpscaleOptions(output=str(tmp_path / "out"), workers=2)
    jobs = plan_jobs([str(src)], good, model.scale)
    with pytest.raises(UserError, match=rf"workers={workers!r}: .*at least 1"):
        run_batch(model, jobs, opts)  # run_batch called on its own
    assert [job.status for job in jobs] == ["pending"] and not (tmp_path / "out").exists()


def _spied_lpips(weights_dir: str, metric=None):  # noqa: F811
    """An LPIPS metric (random alex backbone) whose embeddings are tracked: each call's features by weak
    reference, and how many earlier embeddings are still alive when a call starts."""
    import weakref

    from srtool.perceptual import load_lpips

    metric = metric or load_lpips("alex", _random_backbone("alex", weights_dir))
    embed, made, alive_at_call = metric.module.embed, [], []
    lock = threading.Lock()

    def spy(x):
        with lock:
            alive_at_call.append(sum(ref() is not None for ref in made))
        out = embed(x)
        with lock:
            made.append(weakref.ref(out[0]))
        return out

    metric.module.embed = spy
    return metric, alive_at_call, made


def _images(seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (48, 40, 3), np.uint8)
    return hr, [np.clip(hr.astype(int) + rng.integers(-9, 10, hr.shape), 0, 255).astype(np.uint8) for _ in range(2)]


def test_lpips_drops_the_previous_images_features_before_embedding_the_next(weights_dir):  # noqa: F811
    """The HR features are cached for the next model on the same image; the cache of the previous image
    was still held while the next image's HR was embedded (two images' features at once: ~1.4 GB more
    for LPIPS-vgg on a DIV2K image)."""
    metric, alive_at_call, _ = _spied_lpips(weights_dir)
    for seed in (1, 2, 3):
        hr, srs = _images(seed)
        for sr in srs:  # two models on one image: HR embedded once, then each SR
            metric.score(sr, hr)
    # per image: HR (nothing else alive), SR (its HR alive), SR (its HR alive)
    assert alive_at_call == [0, 1, 1] * 3


def test_lpips_cache_is_per_lane(weights_dir):  # noqa: F811
    """Two lanes, each scoring two models on its own image, interleaved: each lane embeds its HR once
    (a shared cache was replaced by the other lane's image, so every model embedded its HR again), and
    the values equal one lane's."""
    metric, alive_at_call, _ = _spied_lpips(weights_dir)
    images = {seed: _images(seed) for seed in (1, 2)}
    expected = {seed: [metric.score(sr, hr) for sr in srs] for seed, (hr, srs) in images.items()}
    del alive_at_call[:]
    turn = threading.Barrier(2, timeout=30)
    got = {}

    def lane(seed):
        hr, srs = images[seed]
        values = []
        for sr in srs:
            turn.wait()
            if seed == 2:
                turn.wait()  # lane 1 scores first, then lane 2: each model alternates between the lanes
            values.append(metric.score(sr, hr))
            if seed == 1:
                turn.wait()
        got[seed] = values

    threads = [threading.Thread(target=lane, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert got.keys() == expected.keys()  # values: equal up to float32 summation order (team sizes may differ)
    assert all(got[seed] == pytest.approx(expected[seed], rel=1e-6, abs=1e-9) for seed in expected)
    assert len(alive_at_call) == 2 + 4  # one HR per lane, one SR per model and lane


@pytest.mark.parametrize("workers", [1, 2])
def test_an_output_that_appears_during_the_batch_is_not_replaced(tmp_path, workers, two_torch_threads):
    """Skips are planned before any work; a file that appears under an output's name after that (a second
    run into the same folder, the user) was replaced silently without --overwrite. Now that image fails
    with one line naming the file, the file is kept as it is, and the rest of the batch is written."""
    from srtool.upscale import run_batch
    from srtool.upscale_jobs import UpscaleOptions, plan_jobs

    for name in ("a", "b", "c"):
        _write(tmp_path / "in" / f"{name}.png", np.full((8, 6, 3), ord(name), np.uint8))
    model = nearest_model()
    opts = UpscaleOptions(output=str(tmp_path / "out"), workers=workers)
    jobs = plan_jobs([str(tmp_path / "in")], opts, model.scale)
    assert [job.status for job in jobs] == ["pending"] * 3
    theirs = tmp_path / "out" / "b_x4.png"
    theirs.parent.mkdir()
    theirs.write_bytes(b"the user's own file")
    result = run_batch(model, jobs, opts)
    status = {job.output.name: (job.status, job.message) for job in result.jobs}
    assert status["a_x4.png"][0] == status["c_x4.png"][0] == "written", status
    assert status["b_x4.png"][0] == "failed" and "b_x4.png" in status["b_x4.png"][1], status
    assert "--overwrite" in status["b_x4.png"][1] and "\n" not in status["b_x4.png"][1]
    assert theirs.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["a_x4.png", "b_x4.png", "c_x4.png"]  # no temporaries

    opts = UpscaleOptions(output=str(tmp_path / "out"), workers=workers, overwrite=True)
    jobs = plan_jobs([str(tmp_path / "in")], opts, model.scale)
    theirs.unlink()
    theirs.write_bytes(b"again")
    assert [job.status for job in run_batch(model, jobs, opts).jobs] == ["written"] * 3  # --overwrite: replaced
    assert theirs.read_bytes() != b"again"


def test_a_saved_image_that_appears_during_eval_is_not_replaced(benchmarks_dir, tmp_path, monkeypatch, two_torch_threads):
    """--save-images refuses existing files before any work; one that appears after that check (a second
    run saving into the same folder) was replaced silently by the lanes. Now the run stops with one line
    naming it, and the file is kept."""
    from srtool import evaluate as ev
    from srtool.evaluate import EvalOutputs

    root = tmp_path / "saved"
    theirs = root / "Set5" / "bicubic" / "butterfly.png"
    real = ev.evaluate

    def evaluate_after_someone_wrote(*args, **kwargs):
        theirs.parent.mkdir(parents=True)
        theirs.write_bytes(b"another run's image")
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", evaluate_after_someone_wrote)
    with pytest.raises(UserError, match=r"butterfly\.png.*--overwrite"):
        run_eval(["bicubic"], [benchmarks_dir / "Set5"], outputs=EvalOutputs(save_images=root), progress=False, workers=2)
    assert theirs.read_bytes() == b"another run's image"
    assert not [p for p in root.rglob("*") if p.name.startswith(".srtool-")]


@pytest.mark.parametrize("workers", [1, 2])
def test_no_lpips_features_are_held_after_an_evaluation(tmp_path, weights_dir, workers, two_torch_threads):  # noqa: F811
    """The last image's HR features stayed cached in the metric after evaluate_models returned: memory
    (GPU memory when LPIPS runs there) held between training validations, ~1.35 GB for LPIPS-vgg on a
    DIV2K image. Now nothing is held once the run is over, one image at a time or in lanes."""
    from srtool.scoring import Scorer

    from test_eval import make_dataset

    scorer = Scorer(("psnr", "lpips"), 4, "y", "alex", _random_backbone("alex", weights_dir))
    _, alive_at_call, made = _spied_lpips(weights_dir, scorer.lpips)
    rng = np.random.default_rng(0)
    folder = make_dataset(tmp_path / "set", {n: rng.integers(0, 256, (48, 40, 3), np.uint8) for n in "ab"})
    result = evaluate_models([bicubic_model(4), bicubic_model(4)], folder, progress=False, scorer=scorer,
                             workers=workers)
    assert all(image.lpips is not None for r in result for image in r.images)
    assert len(alive_at_call) == 2 + 4  # the HR of each image embedded once for both models
    assert [ref for ref in made if ref() is not None] == []


@pytest.mark.skipif(not hasattr(__import__("os"), "openpty"), reason="needs a pseudo-terminal")
def test_stdin_on_a_terminal_is_refused_up_front(tmp_path, monkeypatch):
    """``srtool upscale -`` with stdin on a terminal (no ``< photo.png``) waited for the terminal in a
    decode thread (an image lane with -j 2), where Ctrl-C cannot reach it: Ctrl-C hung the run (one
    image: a second Ctrl-C aborted the interpreter, "Fatal Python error ... <stdin>"; in lanes it hung
    for good). Refused like a terminal on stdout, before the model loads."""
    import io
    import os

    from srtool.upscale_jobs import UpscaleOptions, check_request

    master, slave = os.openpty()
    terminal = io.TextIOWrapper(open(slave, "rb", buffering=0))
    try:
        monkeypatch.setattr("sys.stdin", terminal)
        other = _write(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
        for inputs in (["-"], [str(other), "-"]):
            with pytest.raises(UserError, match=r"^-: standard input is a terminal"):
                check_request(inputs, UpscaleOptions(output=str(tmp_path / "out")))
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))  # a pipe or file: allowed
        assert len(check_request(["-"], UpscaleOptions(output=str(tmp_path / "out")))) == 1
    finally:
        terminal.close()
        os.close(master)


def test_report_files_that_appear_during_eval_are_kept_and_the_results_still_shown(benchmarks_dir, tmp_path, monkeypatch, capsys):
    """--json/--csv/--markdown/--figure are refused up front when they exist; one that appears while eval
    works (a second run writing the same file) is kept as it is, the others are written, the table is
    still printed and one line per kept file explains the exit status 1."""
    from srtool import evaluate as ev
    from srtool.cli import main

    theirs_json, theirs_figure = tmp_path / "r.json", tmp_path / "fig.png"
    real = ev.evaluate

    def evaluate_while_someone_writes(*args, **kwargs):
        report = real(*args, **kwargs)
        theirs_json.write_text("another run's JSON")
        theirs_figure.write_bytes(b"another run's figure")
        return report

    monkeypatch.setattr(ev, "evaluate", evaluate_while_someone_writes)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "-m", "bicubic", "-d", str(benchmarks_dir / "Set5"), "--json", str(theirs_json),
              "--csv", str(tmp_path / "r.csv"), "--figure", str(theirs_figure), "--no-progress"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1
    assert "28.42" in out  # the published bicubic mean: the table is shown
    assert theirs_json.read_text() == "another run's JSON" and theirs_figure.read_bytes() == b"another run's figure"
    assert (tmp_path / "r.csv").read_text().startswith("model")
    assert "--json" in err and "--figure" in err and "kept" in err and "Traceback" not in err
