"""NIQE and LPIPS: golden value, equality with the reference implementation, properties on real images,
weights handling (download, offline file, missing weights) and the eval integration."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cli_runner import run_cli
from srtool.errors import UserError
from srtool.imageio import read_dataset_image
from srtool.perceptual import BACKBONES, load_lpips, niqe
from srtool.scoring import Scorer, parse_metrics

NIQE_GOLDEN = 5.72957338  # official MATLAB NIQE (R2021a) on niqe_reference_baboon.png, Y rounded, 96x96 blocks


def _blur(image: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigmas = (sigma, sigma, 0) if image.ndim == 3 else sigma
    return np.clip(np.round(gaussian_filter(image.astype(np.float64), sigmas, mode="reflect")), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _random_backbone(net: str, folder: str) -> Path:
    """torchvision's architecture with seeded random weights, saved as a torchvision-layout file."""
    import torchvision

    with torch.device("meta"):  # the classifier's random init alone takes seconds
        features = getattr(torchvision.models, BACKBONES[net].builder)(weights=None).features
    features = features.to_empty(device="cpu")
    torch.manual_seed(0)
    for module in features:
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
    path = Path(folder) / f"{net}-random.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lpips_weights"))


# ------------------------------------------------------------------------------------------- NIQE


def test_niqe_golden_value_of_the_official_matlab_code(shared_data):
    image = read_dataset_image(shared_data / "metrics" / "niqe_reference_baboon.png")
    assert niqe(image) == pytest.approx(NIQE_GOLDEN, abs=1e-5)


def test_niqe_ranks_hr_above_heavy_blur_and_accepts_float_and_grey(benchmarks_dir):
    for name in ("comic", "zebra", "bridge"):  # bridge is single-channel
        hr = read_dataset_image(benchmarks_dir / "Set14" / "HR" / f"{name}.png")
        sharp, blurred = niqe(hr), niqe(_blur(hr))
        assert sharp < blurred - 1.0, (name, sharp, blurred)
    assert niqe(hr.astype(np.float32) / 255.0) == niqe(hr)  # [0, 1] floats are rounded to the same levels


def test_niqe_refuses_an_image_with_fewer_than_two_blocks_and_is_nan_for_a_flat_one():
    with pytest.raises(ValueError, match="too small for NIQE"):
        niqe(np.zeros((100, 150, 3), np.uint8))
    assert np.isnan(niqe(np.full((200, 200, 3), 128, np.uint8)))  # no structure to fit: undefined, not a crash


# ------------------------------------------------------------------------------------------ LPIPS


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_reference_package_with_the_same_backbone(net, benchmarks_dir, weights_dir, monkeypatch):
    import lpips

    from srtool.resize import upscale

    import torchvision

    weights = _random_backbone(net, weights_dir)
    ours = load_lpips(net, weights)

    def backbone(**kwargs):  # what lpips asks torchvision for, with the same weights (and no slow random init)
        with torch.device("meta"):
            network = getattr(torchvision.models, BACKBONES[net].builder)(weights=None)
        features = network.features.to_empty(device="cpu")
        state = torch.load(weights, weights_only=True)
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
        return SimpleNamespace(features=features)

    monkeypatch.setattr(lpips.pretrained_networks, "tv", SimpleNamespace(alexnet=backbone, vgg16=backbone))
    reference = lpips.LPIPS(net=net, verbose=False)  # its own v0.1 calibration weights, from its package

    def as_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)) / 127.5 - 1

    names = ("comic", "baboon") if net == "alex" else ("comic", "zebra")
    for name in names:
        hr = read_dataset_image(benchmarks_dir / "Set14" / "HR" / f"{name}.png")
        sr = upscale(read_dataset_image(benchmarks_dir / "Set14" / "LR_bicubic" / "X4" / f"{name}.png"), 4)
        if net == "vgg":  # VGG16 is ~15x AlexNet's cost: a 192x160 region of the pair keeps the test cheap
            hr, sr = hr[:160, :192], sr[:160, :192]
        with torch.no_grad():
            expected = float(reference(as_tensor(sr), as_tensor(hr)))
        assert ours.score(sr, hr) == pytest.approx(expected, abs=1e-6)
        assert ours.score(hr, hr) == 0.0
        assert ours.score(hr, hr) < ours.score(_blur(hr), hr)


def test_lpips_grey_images_and_identity(benchmarks_dir, weights_dir):
    metric = load_lpips("alex", _random_backbone("alex", weights_dir))
    bridge = read_dataset_image(benchmarks_dir / "Set14" / "HR" / "bridge.png")
    assert bridge.ndim == 2
    assert metric.score(bridge, bridge) == 0.0 and metric.score(_blur(bridge), bridge) > 0.0


def test_lpips_rejects_weights_of_another_network(weights_dir):
    with pytest.raises(UserError, match="not a torchvision alexnet state dict"):
        load_lpips("alex", _random_backbone("vgg", weights_dir))
    with pytest.raises(UserError, match="file not found"):
        load_lpips("alex", Path(weights_dir) / "missing.pth")


class _Server:
    """A local HTTP server for the download path (nothing leaves 127.0.0.1)."""

    def __init__(self, root: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *args: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _serve_backbone(monkeypatch, tmp_path, weights_dir, hash_ok=True):
    """Serve random alexnet weights under a torchvision-style name (sha256 prefix in it); TORCH_HOME in tmp."""
    from srtool import perceptual

    data = _random_backbone("alex", weights_dir).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:8] if hash_ok else "deadbeef"
    served = tmp_path / "served"
    served.mkdir()
    (served / f"alexnet-owt-{digest}.pth").write_bytes(data)
    server = _Server(served)
    monkeypatch.setattr(perceptual, "_TORCHVISION_URL", server.url)
    monkeypatch.setitem(perceptual.BACKBONES, "alex", perceptual.BACKBONES["alex"].__class__(
        "alexnet", f"alexnet-owt-{digest}.pth", BACKBONES["alex"].taps, BACKBONES["alex"].channels))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SRTOOL_LPIPS_WEIGHTS", raising=False)
    return server, tmp_path / "torch_home" / "hub" / "checkpoints" / f"alexnet-owt-{digest}.pth"


def test_lpips_downloads_backbone_into_the_hub_cache_then_works_offline(monkeypatch, tmp_path, weights_dir):
    server, cached = _serve_backbone(monkeypatch, tmp_path, weights_dir)
    try:
        metric = load_lpips("alex")
    finally:
        server.close()
    assert cached.is_file() and metric.backbone_source == str(cached)
    again = load_lpips("alex")  # server gone: the cached copy is used
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert again.score(image, _blur(image)) == metric.score(image, _blur(image)) > 0


def test_lpips_download_with_a_wrong_hash_is_refused_and_leaves_nothing(monkeypatch, tmp_path, weights_dir):
    server, cached = _serve_backbone(monkeypatch, tmp_path, weights_dir, hash_ok=False)
    try:
        with pytest.raises(UserError, match="--lpips-weights FILE"):
            load_lpips("alex")
    finally:
        server.close()
    leftovers = list(cached.parent.glob("*")) if cached.parent.exists() else []
    assert not cached.exists() and leftovers == []  # no partial or temporary file left in the cache


def test_eval_lpips_without_weights_exits_2_before_reading_any_image(monkeypatch, tmp_path, benchmarks_dir, capsys):
    from srtool import evaluate, perceptual

    monkeypatch.setattr(perceptual, "_TORCHVISION_URL", "http://127.0.0.1:9/")  # nothing listens: offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SRTOOL_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setattr(evaluate, "open_dataset", lambda *a, **k: pytest.fail("a dataset was opened"))
    out = tmp_path / "out.json"
    code = run_cli("eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "--metric", "psnr,lpips",
                   "--json", str(out))
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "LPIPS-alex needs torchvision's ImageNet alexnet weights" in err and "--lpips-weights FILE" in err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) <= 3  # one (wrapped) line


# ------------------------------------------------------------------------------------------- eval


def test_parse_metrics():
    assert parse_metrics("psnr, NIQE,psnr") == ("psnr", "niqe")
    assert parse_metrics(["lpips", "ssim,niqe"]) == ("lpips", "ssim", "niqe")
    with pytest.raises(UserError, match="unknown metric"):
        parse_metrics("fid")


def test_eval_with_every_metric_writes_columns_and_directions(benchmarks_dir, weights_dir, tmp_path, capsys):
    weights = _random_backbone("alex", weights_dir)
    out = tmp_path
    code = run_cli("eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "--metric", "psnr,ssim,lpips,niqe",
                   "--lpips-weights", str(weights), "--json", str(out / "r.json"), "--csv", str(out / "r.csv"),
                   "--markdown", str(out / "r.md"), "--figure", str(out / "f.png"))
    console = capsys.readouterr().out
    assert code == 0
    assert "NIQE ↓" in console and "LPIPS ↓" in console and "lower is better: LPIPS, NIQE" in console
    doc = json.loads((out / "r.json").read_text())
    assert doc["schema"] == "srtool-eval/2" and doc["metrics"] == ["psnr", "ssim", "lpips", "niqe"]
    assert doc["metric_info"]["niqe"]["better"] == "lower" and doc["metric_info"]["psnr"]["better"] == "higher"
    assert doc["metric_sources"]["lpips_backbone"] == str(weights)
    result = doc["results"][0]
    assert round(result["psnr"], 3) == 28.418  # PSNR unchanged by the extra metrics
    hr = read_dataset_image(benchmarks_dir / "Set5" / "HR" / "baby.png")
    from srtool.resize import upscale

    sr = upscale(read_dataset_image(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / "baby.png"), 4)
    baby = next(i for i in result["images"] if i["name"] == "baby")
    assert baby["niqe"] == pytest.approx(niqe(sr), abs=1e-12)
    assert baby["lpips"] == pytest.approx(load_lpips("alex", weights).score(sr, hr), abs=1e-7)
    assert result["niqe"] == pytest.approx(np.mean([i["niqe"] for i in result["images"]]))
    rows = list(csv.DictReader(open(out / "r.csv", newline="")))
    assert set(("psnr", "ssim", "lpips", "niqe")) <= set(rows[0]) and len(rows) == 6
    markdown = (out / "r.md").read_text()
    assert "Set5 NIQE ↓" in markdown and "lower is better" in markdown
    assert (out / "f.png").is_file()


def test_eval_niqe_scores_a_plain_folder_of_images_as_they_are(benchmarks_dir, tmp_path, capsys):
    out = tmp_path / "n.json"
    folder = benchmarks_dir / "Set5" / "HR"
    assert run_cli("eval", "--metric", "niqe", "--data", str(folder), "--json", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["models"][0]["identity"] == "as-is" and set(doc["results"][0]) >= {"niqe"}
    assert "psnr" not in doc["results"][0]
    images = {i["name"]: i["niqe"] for i in doc["results"][0]["images"]}
    assert images["bird.png"] == niqe(read_dataset_image(folder / "bird.png"))
    # with a full-reference metric the same plain folder is a set of HR images (LR made on the fly):
    # bicubic then scores the published Set5 mean, and NIQE is computed on the bicubic output
    out2 = tmp_path / "hr.json"
    assert run_cli("eval", "--metric", "niqe,psnr", "--model", "bicubic", "--data", str(folder), "--json", str(out2)) == 0
    result = json.loads(out2.read_text())["results"][0]
    assert abs(result["psnr"] - 28.4177) < 1e-3 and result["niqe"] > 5


def test_figure_labels_show_the_chosen_metrics(benchmarks_dir):
    from srtool.figure import comparison_figure
    from srtool.loading import bicubic_model

    hr = read_dataset_image(benchmarks_dir / "Set5" / "HR" / "bird.png")
    lr = read_dataset_image(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / "bird.png")
    scorer = Scorer(("psnr", "ssim", "niqe"), 4)
    _, layout = comparison_figure(hr, lr, [bicubic_model(4)], ["bicubic"], 4, region=(40, 40, 64, 64), scorer=scorer)
    label = layout.labels[1]
    assert label[0] == "bicubic" and label[1].endswith("dB / " + label[1].split(" / ")[1])
    assert label[2].startswith("NIQE ") and float(label[2].split()[1]) == pytest.approx(scorer.score(bicubic_model(4)(lr), hr)["niqe"], abs=1e-3)


# --------------------------------------------------------------------------------------- training


def _offline_lpips(monkeypatch, tmp_path):
    from srtool import perceptual

    monkeypatch.setattr(perceptual, "_TORCHVISION_URL", "http://127.0.0.1:9/")  # nothing listens: offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SRTOOL_LPIPS_WEIGHTS", raising=False)


def test_validation_plan_picks_lpips_for_gan_presets_and_says_when_it_cannot(monkeypatch, tmp_path, weights_dir):
    from srtool.config import load_preset
    from srtool.train.validation import plan_validation

    _offline_lpips(monkeypatch, tmp_path)
    notes: list[str] = []
    plan, _ = plan_validation(load_preset("srresnet"), notes.append)
    assert (plan.metrics, plan.select, notes) == (("psnr", "ssim"), "psnr", [])
    plan, scorer = plan_validation(load_preset("esrgan"), notes.append)
    assert plan.select == "psnr" and "lpips" not in plan.metrics and "niqe" in plan.metrics
    assert len(notes) == 1 and "best checkpoint picked by PSNR instead" in notes[0] and plan.notes == notes
    weights = _random_backbone("alex", weights_dir)
    plan, scorer = plan_validation(load_preset("srgan", [f"validation.lpips_weights='{weights}'"]), notes.append)
    assert plan.select == "lpips" and not plan.higher_is_better and plan.sources["lpips_backbone"] == str(weights)
    with pytest.raises(UserError, match="validation.select = 'lpips'.*--lpips-weights"):
        plan_validation(load_preset("srresnet", ["validation.metrics=['psnr','lpips']", "validation.select='lpips'"]),
                        notes.append)
    with pytest.raises(UserError, match="must be one of validation.metrics"):
        load_preset("srresnet", ["validation.select='niqe'"])
    assert load_preset("srresnet", ["validation.metric='ssim'"]).validation.select == "ssim"  # old run dirs
    # select = auto on a PSNR-stage preset that does not validate PSNR: the first validated metric picks best
    plan, _ = plan_validation(load_preset("srresnet", ["validation.metrics=['ssim']"]), notes.append)
    assert (plan.metrics, plan.select) == (("ssim",), "ssim")


def test_figure_without_psnr_ranks_by_the_chosen_metric(benchmarks_dir, tmp_path, capsys):
    """--metric ssim --figure: the figure's image is picked by SSIM (used to fail after the whole evaluation)."""
    figure = tmp_path / "f.png"
    assert run_cli("eval", "--model", "bicubic", "--data", str(benchmarks_dir / "Set5"), "--metric", "ssim",
                   "--figure", str(figure), "--json", str(tmp_path / "r.json")) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    images = doc["results"][0]["images"]
    worst = min(images, key=lambda i: i["ssim"])["name"]
    printed = " ".join(capsys.readouterr().err.split())
    assert figure.is_file() and f"(Set5/{worst}," in printed, printed


def test_label_without_a_model_row_is_refused(benchmarks_dir, capsys):
    assert run_cli("eval", "--metric", "niqe", "--data", str(benchmarks_dir / "Set5" / "HR"), "--label", "x") == 2
    assert "--label" in capsys.readouterr().err


@pytest.mark.slow  # ~30 s wall on the shared 2-core machine (a real run: store, 4 steps, 2 validations)
def test_training_validates_every_metric_and_keeps_the_lowest_lpips(shared_data, benchmarks_dir, weights_dir, tmp_path):
    import shutil

    from srtool.train import Trainer, TrainOptions

    images = tmp_path / "hr"
    images.mkdir()
    for path in sorted((shared_data / "train" / "T91").glob("*.png"))[:6]:
        shutil.copy(path, images / path.name)
    weights = _random_backbone("alex", weights_dir)
    overrides = ["train.num_workers=0", "log.every=1", "checkpoint.every=2", "train.epochs=1", "train.iters_per_epoch=4",
                 "validation.every=2", f"validation.datasets=['{benchmarks_dir / 'Set5'}']",
                 "validation.metrics=['psnr','lpips','niqe']", "validation.select='lpips'",
                 f"validation.lpips_weights='{weights}'", "model.generator.n_blocks=1", "model.generator.n_feats=16",
                 "train.batch_size=2", "train.hr_crop=32"]
    trainer = Trainer(TrainOptions(preset="srresnet", data=[images], out=tmp_path / "run", overrides=overrides,
                                   progress=False, cache_dir=tmp_path / "cache"), warn=lambda message: None)
    result = trainer.run()
    trainer.close()
    run = result.run_dir
    plan = json.loads((run / "validation.json").read_text())
    assert plan["select"] == "lpips" and plan["metrics"] == ["psnr", "lpips", "niqe"]
    vals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert len(vals) == 2 and all({"Set5/psnr", "Set5/lpips", "Set5/niqe"} <= set(v) for v in vals)
    best = min(vals, key=lambda v: v["Set5/lpips"])
    assert result.best["metric"] == "lpips" and result.best["iteration"] == best["iter"]
    assert result.best["score"] == pytest.approx(best["Set5/lpips"])
    assert (run / "curves.png").is_file() and (run / "exports" / "best.safetensors").is_file()
