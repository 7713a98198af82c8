"""srtool train on real data: the store-fed crops, the loss terms, a PSNR run that beats bicubic on Set5,
both GAN presets end to end, the guards, and the exports that eval/upscale load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from srtool.errors import UserError
from srtool.models import build_network
from srtool.models.vgg import vgg19_features
from srtool.train import NonFiniteLossError, Trainer, TrainOptions, train
from srtool.train.checkpoint import load_checkpoint
from srtool.train.data import CropSource, IterationBatchSampler, KeyedCropDataset, make_loader
from srtool.train.losses import discriminator_loss, generator_adversarial

SET5_BICUBIC_PSNR = 28.4177  # published mean (shared/data/reference), y protocol


@pytest.fixture(scope="session")
def t291(shared_data, tmp_path_factory) -> Path:
    """T91 + BSD200 prepared by srtool prepare (the real training store)."""
    from srtool.prepare import prepare_folder

    out = tmp_path_factory.mktemp("prepared") / "t291"
    train_dir = shared_data / "train"
    return prepare_folder([train_dir / "T91", train_dir / "BSD200"], out, scale=4, workers=2, progress=False)


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory) -> Path:
    """A randomly initialised VGG19 of the true architecture, saved as torchvision's key layout."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, path)
    return path


def options(tmp_path: Path, data: Path, preset: str, *overrides: str, **kw) -> TrainOptions:
    base = ["train.num_workers=0", "validation.datasets=[]", "log.every=1", "checkpoint.every=2", "train.epochs=1"]
    return TrainOptions(preset=preset, data=[data], out=tmp_path / "run", overrides=[*base, *overrides],
                        progress=False, **kw)


TINY_SRRESNET = ["model.generator.n_blocks=1", "model.generator.n_feats=16", "train.batch_size=2", "train.hr_crop=32"]
TINY_D = ["model.discriminator.n_blocks=4", "model.discriminator.base_channels=8", "model.discriminator.max_channels=16",
          "model.discriminator.pool_size=2", "model.discriminator.hidden=16"]


# ------------------------------------------------------------------------------------------- data


def test_crops_are_aligned_augmented_and_keyed_by_position(t291):
    from srtool.prepare import TrainingStore

    store = TrainingStore.open(t291, 4)
    source = CropSource([store], ["t291"], hr_crop=64, scale=4)
    ds = KeyedCropDataset(source, seed=7)
    seen = set()
    for position in range(0, 4000, 97):
        si, item, y, x, flip, turns = ds.window(position)
        seen.add((flip, turns))
        lr, hr = ds.sample(position)
        want_lr, want_hr = store.lr(item)[y:y + 16, x:x + 16], store.hr(item)[4 * y:4 * y + 64, 4 * x:4 * x + 64]
        if flip:
            want_lr, want_hr = want_lr[:, ::-1], want_hr[:, ::-1]
        want_lr, want_hr = np.rot90(want_lr, turns), np.rot90(want_hr, turns)
        assert lr.shape == (16, 16, 3) and hr.shape == (64, 64, 3)
        assert np.array_equal(lr, want_lr) and np.array_equal(hr, want_hr)
    assert len(seen) == 8  # all eight flips/rotations occur
    # a fresh dataset object (another process, a resume) gives the same sample for the same position
    again = KeyedCropDataset(CropSource([store], ["t291"], 64, 4), seed=7)
    assert all(torch.equal(a, b) for a, b in zip(ds[1234], again[1234]))
    # each epoch visits every usable sub-image once
    epoch = {ds.window(p)[1] for p in range(len(source))}
    assert len(epoch) == len(source)


def test_loader_is_worker_independent_and_sharded_like_a_bigger_batch(t291):
    from srtool.prepare import TrainingStore

    ds = KeyedCropDataset(CropSource([TrainingStore.open(t291, 4)], ["t291"], 32, 4), seed=1)
    one = [b for b in make_loader(ds, 3, 6, batch_size=4, num_workers=0)]
    two = [b for b in make_loader(ds, 3, 6, batch_size=4, num_workers=2)]
    for (la, ha), (lb, hb) in zip(one, two, strict=True):
        assert torch.equal(la, lb) and torch.equal(ha, hb) and la.dtype == torch.uint8
    rank0 = list(IterationBatchSampler(0, 3, 2, rank=0, world_size=2))
    rank1 = list(IterationBatchSampler(0, 3, 2, rank=1, world_size=2))
    assert [a + b for a, b in zip(rank0, rank1)] == list(IterationBatchSampler(0, 3, 4))


def test_images_smaller_than_the_crop_are_skipped_with_a_warning(t291):
    from srtool.prepare import TrainingStore

    store = TrainingStore.open(t291, 4)
    warnings: list[str] = []
    source = CropSource([store], ["t291"], hr_crop=200, scale=4, warn=warnings.append)
    small = [i for i in range(len(store)) if min(store.hr(i).shape[:2]) < 200]
    assert small and len(source) == len(store) - len(small)
    assert len(warnings) == 1 and f"skipped {len(small)} of {len(store)}" in warnings[0] and "200 px" in warnings[0]
    with pytest.raises(UserError, match="lower train.hr_crop"):
        CropSource([store], ["t291"], hr_crop=1024, scale=4, warn=warnings.append)


# ----------------------------------------------------------------------------------------- losses


def test_adversarial_losses_match_their_definitions():
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    real, fake = torch.tensor([[1.5], [-0.3], [0.7]]), torch.tensor([[-1.0], [0.2], [0.4]], requires_grad=True)
    ones, zeros = torch.ones(3, 1), torch.zeros(3, 1)
    assert torch.allclose(generator_adversarial("vanilla", fake, None), bce(fake, ones))
    g = generator_adversarial("ragan", fake, real)
    assert torch.allclose(g, (bce(real - fake.mean(), zeros) + bce(fake - real.mean(), ones)) / 2)
    g.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0  # both terms reach the generator
    d = discriminator_loss("ragan", real, fake.detach())
    assert torch.allclose(d["d_real"] + d["d_fake"],
                          (bce(real - fake.mean(), ones) + bce(fake - real.mean(), zeros)).detach() / 2)
    d = discriminator_loss("vanilla", real, fake.detach())
    assert torch.allclose(d["d_real"] + d["d_fake"], bce(real, ones) + bce(fake.detach(), zeros))


def test_perceptual_terms_follow_the_presets(vgg_file):
    from srtool.config import load_preset
    from srtool.models.vgg import VGGFeatureExtractor
    from srtool.train.losses import GeneratorLoss

    sr, hr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    srgan = GeneratorLoss(load_preset("srgan").loss, vgg_file)
    after = VGGFeatureExtractor("conv5_4", before_activation=False, weights=vgg_file)
    want = torch.nn.functional.mse_loss(after(sr) / 12.75, after(hr) / 12.75)
    assert set(srgan(sr, hr)) == {"perceptual"} and torch.allclose(srgan(sr, hr)["perceptual"], want, rtol=1e-5)
    esrgan = GeneratorLoss(load_preset("esrgan").loss, vgg_file)
    before = VGGFeatureExtractor("conv5_4", before_activation=True, weights=vgg_file)
    terms = esrgan(sr, hr)
    assert torch.allclose(terms["perceptual"], torch.nn.functional.l1_loss(before(sr), before(hr)), rtol=1e-5)
    assert torch.allclose(terms["pixel"], 1e-2 * torch.nn.functional.l1_loss(sr, hr))


# ------------------------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_small_srresnet_beats_bicubic_on_set5_and_exports(t291, benchmarks_dir, tmp_path):
    """A PSNR-stage run on T91+BSD200 passes MATLAB bicubic on Set5 within 1000 CPU iterations."""
    from srtool.evaluate import evaluate_dataset
    from srtool.loading import load_model

    set5 = benchmarks_dir / "Set5"
    opts = options(
        tmp_path, t291, "srresnet",
        "model.generator.n_blocks=2", "model.generator.n_feats=16", "model.generator.tail_kernel=3",
        "model.generator.batch_norm=false", "model.generator.trunk_batch_norm=false",  # BN is slow on the CPU
        "train.batch_size=16", "train.hr_crop=48", "train.lr=4e-3", "train.ema_decay=0.9",
        "train.iters_per_epoch=1000", "train.num_workers=0", "log.every=50", "checkpoint.every=500",
        "validation.every=500", f"validation.datasets=['{set5}']",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: immune to OpenMP barrier stalls on a busy 2-core CI runner
    try:
        result = train(opts)
    finally:
        torch.set_num_threads(threads)
    run = result.run_dir
    assert result.iteration == 1000 and result.best is not None
    assert result.best["score"] > SET5_BICUBIC_PSNR, result.best
    # curves.png and the log
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "val"] == [500, 1000]
    assert sum(r["kind"] == "train" for r in records) == 20
    env = json.loads((run / "environment.json").read_text())
    assert {"torch", "srtool_version", "cuda_available", "device"} <= set(env)
    assert 'name = "srresnet"' in (run / "preset.toml").read_text()
    # the export is the validated EMA generator and loads without the preset
    model = load_model(run, device="cpu")
    assert model.info["iterations"] == result.best["iteration"] and model.info["weights"] == "ema"
    again = evaluate_dataset(model, set5, protocol="y", progress=False)
    assert again.psnr == pytest.approx(result.best["scores"]["Set5"]["psnr"], abs=1e-6)
    assert load_model(run / "exports" / "last.safetensors").info["iterations"] == 1000


def test_srgan_runs_end_to_end_from_a_psnr_export(t291, vgg_file, tmp_path):
    from srtool.config import load_preset
    from srtool.models.export import save_export

    preset = load_preset("srgan", TINY_SRRESNET + TINY_D)
    torch.manual_seed(5)
    init = tmp_path / "psnr.safetensors"
    save_export(init, build_network(preset.model.generator), {"preset": "srresnet"})
    warnings: list[str] = []
    opts = options(tmp_path, t291, "srgan", *TINY_SRRESNET, *TINY_D, "train.iters_per_epoch=3",
                   init_from=str(init), vgg_weights=str(vgg_file))
    trainer = Trainer(opts, warn=warnings.append)
    from safetensors.torch import load_file

    init_state = load_file(init)
    assert all(torch.equal(v, init_state[k]) for k, v in trainer.generator.state_dict().items())
    d_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    result = trainer.run()
    trainer.close()
    assert not warnings and result.iteration == 3
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert {"loss/perceptual", "loss/adversarial", "loss/d_real", "loss/d_fake"} <= set(records[-1])
    assert "loss/pixel" not in records[-1]
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss/"))
    assert any(not torch.equal(v, trainer.discriminator.state_dict()[k]) for k, v in d_before.items() if v.is_floating_point())
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "iter_00000003.pt")
    assert {"discriminator", "optimizer_d", "scheduler_d", "optimizer_g", "ema", "rng", "data"} <= set(ckpt)
    assert (result.run_dir / "exports" / "last.safetensors").is_file()


def test_esrgan_runs_end_to_end_and_warns_when_started_from_scratch(t291, vgg_file, benchmarks_dir, tmp_path):
    tiny = ["model.generator.n_blocks=1", "model.generator.n_feats=16", "model.generator.growth=8",
            "train.batch_size=2", "train.hr_crop=32", "train.iters_per_epoch=3", "validation.every=3",
            f"validation.datasets=['{benchmarks_dir / 'Set5'}']"]
    warnings: list[str] = []
    trainer = Trainer(options(tmp_path, t291, "esrgan", *tiny, *TINY_D, vgg_weights=str(vgg_file)),
                      warn=warnings.append)
    result = trainer.run()
    trainer.close()
    assert any("RANDOM generator" in w and "--init-from" in w for w in warnings)
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert {"loss/pixel", "loss/perceptual", "loss/adversarial", "loss/d_real", "loss/d_fake"} <= set(records[-2])
    assert records[-1]["kind"] == "val" and math.isfinite(records[-1]["Set5/psnr"])
    assert (result.run_dir / "exports" / "best.safetensors").is_file() and (result.run_dir / "curves.png").is_file()


@pytest.mark.slow
def test_compiled_gan_step_matches_eager(t291, vgg_file, tmp_path):
    """train.compile: D's compiled forward updates its BatchNorm buffers in place; the generator's backward
    must already have run by then (it failed on an H200 before the step was reordered)."""
    tiny = [*TINY_SRRESNET, *TINY_D, "train.iters_per_epoch=2", "checkpoint.every=100"]
    weights = {}
    for compiled in (False, True):
        trainer = Trainer(options(tmp_path / str(compiled), t291, "srgan", *tiny, f"train.compile={str(compiled).lower()}",
                                  vgg_weights=str(vgg_file)), warn=lambda msg: None)
        trainer.run()
        weights[compiled] = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
        trainer.close()
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------------------- guards


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(t291, tmp_path):
    trainer = Trainer(options(tmp_path, t291, "srresnet", *TINY_SRRESNET, "train.iters_per_epoch=10"))
    trainer.run(until=4)
    ckpt_dir = trainer.run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    with torch.no_grad():
        trainer.generator.tail.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at iteration 5.*iter_00000004.pt"):
        trainer.run()
    trainer.close()
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before
    assert load_checkpoint(ckpt_dir / "iter_00000004.pt")["iteration"] == 4


def test_nonfinite_skip_option_skips_the_step(t291, tmp_path):
    trainer = Trainer(options(tmp_path, t291, "srresnet", *TINY_SRRESNET, "train.iters_per_epoch=6",
                              "train.on_nonfinite=skip"))
    trainer.run(until=2)
    weight = trainer.generator.tail.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0, 0, 0] = float("inf")
    ema_before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    trainer.run(until=4)  # two poisoned steps: skipped, nothing updated
    assert trainer.skipped == 2 and trainer.iteration == 4
    assert all(torch.equal(v, trainer.ema.module.state_dict()[k]) for k, v in ema_before.items())
    with torch.no_grad():
        weight.copy_(saved)
    result = trainer.run()
    trainer.close()
    assert result.iteration == 6 and result.skipped_steps == 2
    assert trainer.opt_g.state[weight]["step"].item() == 4  # 6 iterations, 2 skipped


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srtool", "train", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_bad_set_and_bad_inputs_fail_before_anything_heavy(t291, tmp_path):
    out = tmp_path / "run"
    res = cli("--preset", "srgan", "--data", str(t291), "--out", str(out), "--set", "train.lr=abc")
    assert res.returncode == 2 and "train.lr" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    res = cli("--preset", "srresnet", "--data", str(tmp_path / "nope"), "--out", str(out))
    assert res.returncode == 2 and "nope" in res.stderr and not out.exists()
    res = cli("--preset", "srresnet", "--data", str(t291), "--out", str(out), "--set", "validation.datasets=['Set5x']")
    assert res.returncode == 2 and "Set5x" in res.stderr and not out.exists()


def test_vgg_weights_missing_offline_is_one_clear_error_before_training(t291, tmp_path):
    import os

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    out = tmp_path / "run"
    res = cli("--preset", "esrgan", "--data", str(t291), "--out", str(out), "--set", "validation.datasets=[]", env=env)
    assert res.returncode == 2 and "--vgg-weights" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "checkpoints").exists()


def test_existing_run_is_not_overwritten_and_init_from_must_match(t291, tmp_path):
    train(options(tmp_path, t291, "srresnet", *TINY_SRRESNET, "train.iters_per_epoch=1"))
    with pytest.raises(UserError, match="--resume .*--overwrite"):
        Trainer(options(tmp_path, t291, "srresnet", *TINY_SRRESNET, "train.iters_per_epoch=1"))
    mismatched = options(tmp_path, t291, "srresnet", *TINY_SRRESNET, "model.generator.n_blocks=2",
                         init_from=str(tmp_path / "run"))
    mismatched.out = tmp_path / "run2"
    with pytest.raises(UserError, match="does not match the preset's model.generator.*n_blocks"):
        Trainer(mismatched)


def test_out_of_memory_suggests_a_smaller_batch_or_crop(t291, tmp_path):
    trainer = Trainer(options(tmp_path, t291, "srresnet", *TINY_SRRESNET, "train.iters_per_epoch=2"))

    def exhausted(_x):  # what a too-large batch raises on a GPU
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    trainer.g_run = exhausted
    with pytest.raises(UserError, match=r"out of memory at train.batch_size=2, train.hr_crop=32: try a smaller batch"):
        trainer.run()
    trainer.close()
    assert not (trainer.run_dir / "checkpoints").exists()
