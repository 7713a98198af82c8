"""GPU-readiness of the training step, proven on the CPU: no value is read back to the host between log
steps, the deferred NaN/inf check still stops before anything is saved, the sync-free path trains
bitwise like the per-step-checked one, the fused EMA is the EMA, and loader workers never exceed cores."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from srtool.train import NonFiniteLossError, Trainer, TrainOptions
from srtool.train.engine import EMA
from test_train import vgg_file  # noqa: F401 -- the shared random-VGG19 fixture

# Tensor methods that copy a value to the host: on a GPU each one waits for every queued kernel.
HOST_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "is_nonzero", "nonzero"}
TINY = ["model.generator.n_blocks=1", "model.generator.n_feats=16", "train.batch_size=2", "train.hr_crop=32"]
TINY_D = ["model.discriminator.n_blocks=4", "model.discriminator.base_channels=8", "model.discriminator.max_channels=16",
        "model.discriminator.pool_size=2", "model.discriminator.hidden=16"]


@pytest.fixture(scope="module")
def small_store(shared_data, tmp_path_factory) -> Path:
    """Twelve T91 images prepared by srtool prepare (a real training store, small enough to be quick)."""
    from srtool.prepare import prepare_folder

    root = tmp_path_factory.mktemp("t12")
    images = root / "images"
    images.mkdir()
    for path in sorted((shared_data / "train" / "T91").iterdir())[:12]:
        shutil.copy(path, images / path.name)
    return prepare_folder([images], root / "prepared", scale=4, workers=1, progress=False)


def make_trainer(tmp_path: Path, data: Path, vgg: Path, *overrides: str, preset: str = "srgan") -> Trainer:
    base = ["train.num_workers=0", "validation.datasets=[]", "train.epochs=1", "train.iters_per_epoch=8", *TINY,
            *(TINY_D if preset in ("srgan", "esrgan") else [])]
    opts = TrainOptions(preset=preset, data=[data], out=tmp_path, overrides=[*base, *overrides], progress=False,
                        vgg_weights=str(vgg))
    return Trainer(opts, warn=lambda msg: None)


class HostReads(TorchFunctionMode):
    """Records every host read (see HOST_READS) once the run's first step has started, with the trainer's
    iteration and whether it was inside a step (the run's set-up, e.g. the loader drawing its seed, is
    once per run, not per step).

    The optimiser's step counters are excluded: torch keeps them on the host (non-capturable Adam), so
    reading them never waits for a device."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer, self.in_step, self.started, self.reads = trainer, False, False, []
        self.host_counters: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.started and name in HOST_READS and args and isinstance(args[0], torch.Tensor) \
                and id(args[0]) not in self.host_counters:
            self.reads.append((self.trainer.iteration, self.in_step, name))
        return func(*args, **(kwargs or {}))


def record_host_reads(trainer: Trainer, until: int) -> HostReads:
    """Run ``trainer`` to ``until`` (after one warm-up step that creates the optimiser state)."""
    trainer.run(until=1)
    mode = HostReads(trainer)
    mode.host_counters = {id(s["step"]) for opt in (trainer.opt_g, trainer.opt_d) if opt for s in opt.state.values()}
    step = trainer.step

    def watched_step(*args):
        mode.in_step = mode.started = True
        try:
            return step(*args)
        finally:
            mode.in_step = False

    trainer.step = watched_step
    with mode:
        trainer.run(until=until)
    return mode


def test_gan_step_reads_nothing_back_between_log_steps(small_store, vgg_file, tmp_path):
    trainer = make_trainer(tmp_path / "run", small_store, vgg_file, "log.every=2", "checkpoint.every=4")
    mode = record_host_reads(trainer, until=5)
    trainer.close()
    assert [r for r in mode.reads if r[1]] == []  # nothing inside any step (generator + discriminator)
    # outside the steps: only the log/checkpoint iterations 2 and 4 and the last one (5) read anything
    assert {it for it, _, _ in mode.reads} == {2, 4, 5}


def test_the_host_read_detector_sees_the_per_step_check(small_store, vgg_file, tmp_path):
    """on_nonfinite=skip must decide before the optimiser step: one read per step, which the detector sees
    (so the test above would fail on a step that still synchronised)."""
    trainer = make_trainer(tmp_path / "run", small_store, vgg_file, "log.every=100", "train.on_nonfinite=skip",
                           preset="srresnet")
    mode = record_host_reads(trainer, until=4)
    trainer.close()
    assert sorted({it for it, inside, name in mode.reads if inside and name == "__bool__"}) == [1, 2, 3]


@pytest.mark.slow
def test_sync_free_step_trains_bitwise_like_the_checked_step(small_store, vgg_file, tmp_path):
    states = {}
    for mode in ("stop", "skip"):
        trainer = make_trainer(tmp_path / mode, small_store, vgg_file, "log.every=2", "checkpoint.every=100",
                               f"train.on_nonfinite={mode}", "train.ema_decay=0.5")
        trainer.run(until=3)
        states[mode] = trainer.state_dict()
        states[mode]["log"] = [line.split('"time"')[0] for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
        trainer.close()
    a, b = states["stop"], states["skip"]
    for key in ("generator", "ema", "discriminator"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for sa, sb in zip(a["optimizer_g"]["state"].values(), b["optimizer_g"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["log"] == b["log"] and len(a["log"]) >= 2


def test_deferred_nonfinite_check_stops_before_the_next_save(small_store, vgg_file, tmp_path):
    trainer = make_trainer(tmp_path / "run", small_store, vgg_file, "log.every=3", "checkpoint.every=3",
                           preset="srresnet")
    trainer.run(until=4)
    ckpt_dir = trainer.run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    exports = {p.name: p.read_bytes() for p in (trainer.run_dir / "exports").iterdir()}
    with torch.no_grad():
        trainer.generator.tail.weight[0, 0, 0, 0] = float("nan")  # iteration 5 is the first bad one
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 5 \(pixel=nan\).*iter_00000004.pt"):
        trainer.run()
    trainer.close()
    assert trainer.iteration == 6  # noticed at the next log/checkpoint step ...
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before  # ... before anything was written
    assert {p.name: p.read_bytes() for p in (trainer.run_dir / "exports").iterdir()} == exports


def test_fused_ema_is_the_exponential_moving_average():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    ema = EMA(net, decay=0.9)
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        ema.update(net)
        for name, p in net.named_parameters():  # the definition, one tensor at a time
            reference[name] = 0.9 * reference[name] + 0.1 * p.detach()
    state = ema.module.state_dict()
    for name, _ in net.named_parameters():
        torch.testing.assert_close(state[name], reference[name], rtol=1e-6, atol=1e-6)
    assert torch.equal(state["1.running_mean"], net[1].running_mean)  # buffers are copied, not averaged
    assert int(state["1.num_batches_tracked"]) == int(net[1].num_batches_tracked)


def test_loader_workers_never_exceed_the_usable_cores(monkeypatch):
    from srtool.train import data

    monkeypatch.setattr(data, "usable_cores", lambda: 2)
    assert data.loader_workers(8) == 2 and data.loader_workers(1) == 1 and data.loader_workers(0) == 0
