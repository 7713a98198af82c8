"""`srtool eval` on the CPU evaluates one image per core (image lanes): same values, same order, bounded memory."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from srtool.engine import SRModel
from srtool.evaluate import eval_lanes, evaluate, evaluate_models, open_dataset
from srtool.imageio import read_dataset_image
from srtool.loading import bicubic_model, load_model
from srtool.metrics import rgb_to_y, ssim
from srtool.report import to_json_document
from srtool.resize import upscale

from test_eval import cli, make_dataset, tiny_model  # noqa: F401 -- tiny_model is a fixture
from test_perceptual import weights_dir  # noqa: F401 -- a fixture


def _values(report) -> list:
    """Everything of a report but its clock readings."""
    return [(r["model"], r["dataset"], r["psnr"], r["ssim"], [(i["name"], i["psnr"], i["ssim"], i["error"]) for i in r["images"]])
            for r in to_json_document(report)["results"]]


def test_lanes_give_the_same_values_in_the_dataset_order(benchmarks_dir, tiny_model, two_torch_threads):  # noqa: F811
    """Bicubic and a real srtool network on Set5 + Set14: -j 2 (two lanes, one thread each) reports
    exactly the values of -j 1 (one image on both threads), per image and in the datasets' order."""
    models = [bicubic_model(4), load_model(str(tiny_model), device="cpu")]
    assert eval_lanes(models, 2, 14) == 2  # the lanes really run here
    sets = [benchmarks_dir / "Set5", benchmarks_dir / "Set14"]
    one = evaluate(models, sets, progress=False, workers=1)
    two = evaluate(models, sets, progress=False, workers=2)
    assert _values(one) == _values(two)
    assert [i.name for i in two.results[2].images] == [p.name for p in open_dataset(sets[1], 4).pairs]
    assert two.results[0].psnr == pytest.approx(28.4177, abs=5e-5)  # the published bicubic mean still
    assert torch.get_num_threads() == 2


class _Watched(SRModel):
    """Bicubic that records its calls: the calling thread's torch team and how many calls are inside."""

    def __call__(self, image):
        with self.lock:
            self.inside += 1
            self.calls.append((image.shape[:2], torch.get_num_threads(), self.inside))
        try:
            if image.shape[0] < 20:
                if self.meet is not None:
                    self.meet.wait()  # both small images must be inside their calls at once
            else:
                time.sleep(0.2)
                self.alone_at_end.append(self.inside)
            return super().__call__(image)
        finally:
            with self.lock:
                self.inside -= 1


def _watched() -> _Watched:
    model = _Watched(name="watched", scale=4, identity="watched")
    model.lock, model.inside, model.calls, model.alone_at_end, model.meet = threading.Lock(), 0, [], [], None
    return model


def test_lanes_run_images_at_once_and_a_large_one_alone(tmp_path, monkeypatch, two_torch_threads):
    """Two small images are inside the model at the same time, each on a one-thread team (a barrier
    inside the call proves it); an image at the large-output size runs alone on both threads; on_image
    is never entered by two lanes at once."""
    from srtool import engine

    rng = np.random.default_rng(0)
    small = {"a": rng.integers(0, 256, (64, 48, 3), np.uint8), "c": rng.integers(0, 256, (48, 64, 3), np.uint8)}
    model = _watched()
    model.meet = threading.Barrier(2, timeout=30)
    results = evaluate_models([model], make_dataset(tmp_path / "small", small), progress=False, workers=2)
    assert [i.name for i in results[0].images] == ["a", "c"] and results[0].complete, results[0].images
    assert sorted((shape, threads) for shape, threads, _ in model.calls) == [((12, 16), 1), ((16, 12), 1)]

    # no barrier from here: a small image may hold the cores while the large one waits for them
    images = {**small, "big": rng.integers(0, 256, (160, 120, 3), np.uint8)}
    folder = make_dataset(tmp_path / "set", {name: images[name] for name in ("a", "big", "c")})
    monkeypatch.setattr(engine, "LARGE_OUTPUT_BYTES", 160 * 120 * 3)
    model = _watched()
    in_callback, overlaps, seen = [0], [], []
    data = open_dataset(folder, 4)
    real_load, in_flight, beside_big = data.load, set(), []

    def load(pair):  # a small image loads slowly: time enough to be read beside the large one, were it allowed
        with model.lock:
            if pair.name == "big" or "big" in in_flight:
                beside_big.extend(sorted((in_flight | {pair.name}) - {"big"}))
            in_flight.add(pair.name)
        if pair.name != "big":
            time.sleep(0.2)
        return real_load(pair)

    def on_image(name, hr, lr, outputs):
        in_callback[0] += 1
        overlaps.append(in_callback[0])
        time.sleep(0.05)
        seen.append(name)
        with model.lock:
            in_flight.discard(name)
        in_callback[0] -= 1

    data.load = load
    results = evaluate_models([model], data, progress=False, on_image=on_image, workers=2)
    assert [i.name for i in results[0].images] == ["a", "big", "c"] and results[0].complete, results[0].images
    assert beside_big == []  # the large pair is read only once it has the cores (and memory) to itself
    teams = {shape: (threads, inside) for shape, threads, inside in model.calls}
    assert teams[(40, 30)] == (2, 1) and model.alone_at_end == [1]  # the large image: alone, on both threads
    assert teams[(16, 12)][0] == teams[(12, 16)][0] == 1
    assert sorted(seen) == ["a", "big", "c"] and set(overlaps) == {1}
    assert torch.get_num_threads() == 2


def test_a_strict_failure_in_one_lane_stops_the_run(benchmarks_dir, two_torch_threads):
    """Training-style strict evaluation: a model failing on one image raises with lanes too, and torch's
    thread count is restored."""

    class Fails(SRModel):
        def __call__(self, image):
            if image.shape[0] > 100:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().__call__(image)

    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate_models([Fails(name="f", scale=4, identity="f")], benchmarks_dir / "Set5", progress=False,
                        strict=True, workers=2)
    assert torch.get_num_threads() == 2


def test_lanes_only_when_every_model_runs_on_the_cpu():
    class OnGpu:
        device = torch.device("cuda")

    cpu = bicubic_model(4)
    assert eval_lanes([cpu], 4, 3) == min(3, torch.get_num_threads())
    assert eval_lanes([cpu], 1, 14) == 1
    assert eval_lanes([cpu, OnGpu()], 4, 14) == 1


def test_ssim_is_the_same_with_any_thread_count(benchmarks_dir):
    """Strips are summed in image order whatever the thread count, so a table does not depend on -j or
    on the machine's cores (before, the sums of each thread's strips were added: last-digit changes)."""
    for name in ("monarch", "pepper", "comic"):  # monarch and pepper changed between 1 and 2 threads
        hr = read_dataset_image(benchmarks_dir / "Set14" / "HR" / f"{name}.png")
        lr = read_dataset_image(benchmarks_dir / "Set14" / "LR_bicubic" / "X4" / f"{name}.png")
        a, b = rgb_to_y(hr), rgb_to_y(upscale(lr, 4))
        values = {ssim(a, b, threads=threads) for threads in (1, 2, 3, 4)}  # 16 strips: 1 or 2 workers
        assert len(values) == 1, (name, values)
        # three times as tall (image, flipped, image): 3 and 4 workers deal the strips out too
        tall_a, tall_b = np.vstack([a, a[::-1], a]), np.vstack([b, b[::-1], b])
        values = {ssim(tall_a, tall_b, threads=threads) for threads in (1, 2, 3, 4)}
        assert len(values) == 1, (name, "tall", values)


def test_cli_jobs_option(benchmarks_dir, capsys):
    code, out, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "-j", "2",
                         "--no-progress")
    assert code == 0 and "28.42" in out, err
    code, out, err = cli(capsys, "eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "-j", "0")
    assert code == 2 and "-j" in err and "Traceback" not in err


def test_lpips_in_lanes_equals_one_image_at_a_time(benchmarks_dir, weights_dir, tiny_model, two_torch_threads):  # noqa: F811
    """The LPIPS metric caches the HR embedding for the next model on the same image; lanes share the
    metric, so a lane must never read another lane's cached HR (wrong values or a shape error)."""
    from srtool.scoring import Scorer

    from test_perceptual import _random_backbone

    scorer = Scorer(("psnr", "lpips"), 4, "y", "alex", _random_backbone("alex", weights_dir))
    models = [bicubic_model(4), load_model(str(tiny_model), device="cpu")]
    one = evaluate(models, [benchmarks_dir / "Set5"], progress=False, scorer=scorer, workers=1)
    two = evaluate(models, [benchmarks_dir / "Set5"], progress=False, scorer=scorer, workers=2)
    lpips = lambda report: [i.lpips for r in report.results for i in r.images]  # noqa: E731
    # float32 convolutions sum in another order on a one-thread team: equal to ~1e-9, not bit for bit
    assert None not in lpips(two) and lpips(two) == pytest.approx(lpips(one), rel=1e-6, abs=1e-9)
    psnr = lambda report: [i.psnr for r in report.results for i in r.images]  # noqa: E731
    assert psnr(one) == psnr(two)  # bit for bit


def test_a_model_raising_cancelled_itself_is_a_failure_not_a_stop(benchmarks_dir, two_torch_threads):
    """Only srtool's own stop (Ctrl-C, another lane's error) ends a lane quietly; a model (a user's
    wrapper) that raises srtool's Cancelled on one image fails that image, and every other is scored."""
    from srtool.engine import Cancelled

    class CancelsOnBird(SRModel):
        def __call__(self, image):
            if image.shape[:2] == (72, 72):
                raise Cancelled("its own reason")
            return super().__call__(image)

    for workers in (1, 2):
        result = evaluate_models([CancelsOnBird(name="c", scale=4, identity="c")], benchmarks_dir / "Set5",
                                 progress=False, workers=workers)[0]
        assert [i.name for i in result.images] == ["baby", "bird", "butterfly", "head", "woman"]
        assert [i.name for i in result.failed] == ["bird"] and "Cancelled" in result.failed[0].error


def test_images_as_they_are_are_scored_in_lanes_with_the_same_values(benchmarks_dir, two_torch_threads):
    """`srtool eval --metric niqe -d FOLDER` (no model): two images are scored at once (a barrier in
    the scorer proves it), the NIQE values equal one image at a time's and keep the folder's order."""
    from srtool.evaluate import open_image_folder, score_images
    from srtool.scoring import Scorer

    class Meeting(Scorer):
        """NIQE whose first two calls must be inside the scorer at the same time."""

        meet = threading.Barrier(2, timeout=30)
        calls = 0

        def score(self, sr, hr):
            with lock:
                Meeting.calls += 1
                first_two = Meeting.calls <= 2
            if first_two:
                self.meet.wait()
            return super().score(sr, hr)

    lock = threading.Lock()
    folder = open_image_folder(benchmarks_dir / "Set14" / "HR")
    one = score_images([folder], Scorer(["niqe"], 1), progress=False, workers=1)
    two = score_images([folder], Meeting(["niqe"], 1), progress=False, workers=2)
    values = [[(i.name, i.niqe, i.error) for i in report.results[0].images] for report in (one, two)]
    assert values[0] == values[1]
    assert [name for name, _, _ in values[1]] == [pair.name for pair in folder.pairs]
    assert all(2 < niqe < 20 and error is None for _, niqe, error in values[0])
    assert Meeting.calls == len(folder.pairs)


def test_a_pair_whose_scoring_would_not_fit_beside_others_runs_alone(tmp_path, monkeypatch, two_torch_threads):
    """Scoring needs far more memory than the images (LPIPS-vgg ~1.5 KB per pixel): a pair is kept apart
    when a lane's worth of pairs its size, scoring included, would not fit in half of the free memory,
    though its output is far below the large-output size."""
    from srtool import memory
    from srtool.scoring import Scorer

    rng = np.random.default_rng(1)
    images = {"a": rng.integers(0, 256, (64, 48, 3), np.uint8), "big": rng.integers(0, 256, (160, 120, 3), np.uint8),
              "c": rng.integers(0, 256, (48, 64, 3), np.uint8)}
    per_pixel = 3 + Scorer().working_bytes_per_pixel()  # the HR-sized output held, and its scoring
    assert Scorer(protocol="rgb").working_bytes_per_pixel() > Scorer().working_bytes_per_pixel() > 0
    budget = 160 * 120 * per_pixel * 2 - 1  # two big pairs at once do not fit, two small ones do
    monkeypatch.setattr(memory, "free_memory", lambda: 2 * budget)
    model = _watched()
    results = evaluate_models([model], make_dataset(tmp_path / "set", images), progress=False, workers=2)
    assert [i.name for i in results[0].images] == ["a", "big", "c"] and results[0].complete
    teams = {shape: threads for shape, threads, _ in model.calls}
    assert teams[(40, 30)] == 2 and model.alone_at_end == [1]  # alone, on both threads
    assert teams[(16, 12)] == teams[(12, 16)] == 1
