"""The training engine: one preset (plus ``--set`` overrides) fully describes a run.

Order of work, so that every mistake the user can make surfaces before anything heavy starts:
preset and overrides -> run directory -> validation datasets and data folders -> device/precision ->
VGG19 weights -> ``--init-from`` weights -> training store -> networks -> (``--resume``) state.

One iteration: the generator step (pixel + perceptual + adversarial terms; the discriminator frozen),
then, in a GAN stage, the discriminator step on HR and the detached SR. Nothing in a step reads a
value back to the host (that would make the CPU wait for the GPU every step): losses are accumulated
on the device and read at log steps, and a NaN/inf loss is recorded on the device
(:mod:`srtool.train.finite`) and acted on at the next log, validation or checkpoint step, before
anything is saved (all ranks agree through one collective), so a stopped run never writes a poisoned
checkpoint. ``train.on_nonfinite = "skip"`` must decide before the optimiser step, so it reads the
loss every step. The EMA of the generator (one fused ``_foreach_lerp_``) is updated after every
optimiser step and is what validation and the exports use.

Run directory::

    preset.toml  run.json  environment.json  log.jsonl  curves.png  tensorboard/
    checkpoints/iter_XXXXXXXX.pt  checkpoints/best.pt
    exports/last.safetensors  exports/best.safetensors   (+ .json copies of their metadata)
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import write_text_atomic
from ..config import Preset, dump_toml, load_preset
from ..errors import UserError
from ..models.registry import build_network
from ..threads import usable_cores
from .checkpoint import CheckpointDir, capture_rng_state, load_checkpoint, restore_rng_state
from .data import (CropSource, KeyedCropDataset, check_data_paths, check_distinct_data, make_loader, open_stores,
                   warn_stderr)
from .distributed import DistInfo, any_flag, barrier, init_distributed, shutdown
from .finite import NonFiniteWatch
from .losses import GeneratorLoss, discriminator_loss
from . import runstate

RESUMABLE_FIELDS = ("train.epochs", "train.iters_per_epoch")
"""Preset fields ``--resume RUN --set`` may change: the schedule's length, nothing that alters past steps."""

RUN_FILES = ("checkpoints", "exports", "tensorboard", "log.jsonl", "curves.png", "preset.toml", "run.json",
             "environment.json")


class NonFiniteLossError(UserError):
    """A NaN/inf loss with ``train.on_nonfinite = "stop"``."""


@dataclass
class TrainOptions:
    """Everything ``srtool train`` takes; the library entry point is :func:`train`."""

    preset: str | None = None
    data: list[Path | str] = field(default_factory=list)  # as given: --data twice is refused naming both spellings
    out: Path | None = None
    overrides: list[str] = field(default_factory=list)
    init_from: str | None = None
    vgg_weights: str | None = None
    device: str = "auto"
    resume: Path | None = None
    overwrite: bool = False
    progress: bool = True
    cache_dir: Path | None = None
    restart: bool = False  # with resume: train again from iteration 0, old exports/log/checkpoints kept aside
    allow_random_vgg: bool = False  # --vgg-weights random (a smoke test) is refused without it
    quiet: bool = False  # no validation lines on stderr (the log, curves and exports are written anyway)

    def __post_init__(self) -> None:
        # Python callers: one folder or one override given bare is a list of one, not its characters
        if isinstance(self.data, (str, Path)):
            self.data = [self.data]
        if isinstance(self.overrides, str):
            self.overrides = [self.overrides]


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    total: int
    interrupted: str | None = None
    skipped_steps: int = 0
    best: dict[str, Any] | None = None
    last_validation: dict[str, dict[str, float]] | None = None
    exports: dict[str, Path] = field(default_factory=dict)
    rank: int = 0


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted preset fields that differ between two ``model_dump(mode="json")`` documents."""
    flat_before, flat_after = _flatten(before), _flatten(after)
    return sorted(k for k in flat_before.keys() | flat_after.keys() if flat_before.get(k) != flat_after.get(k))


def lr_factor(preset: Preset, iteration: int) -> float:
    """Learning-rate multiplier at ``iteration`` (a pure function, so resume needs only the iteration)."""
    s, t = preset.train.scheduler, preset.train
    if s.kind == "multistep":
        return s.gamma ** sum(1 for m in s.milestones if iteration >= m)
    if s.kind == "cosine":
        floor = min(1.0, s.eta_min / t.lr)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(iteration, t.total_iters) / t.total_iters))
    return 1.0


class EMA:
    """Exponential moving average of a network's parameters (buffers such as BN statistics are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1.0 - self.decay)
        buffers = [(mine, theirs) for mine, theirs in zip(self.module.buffers(), model.buffers())]
        if buffers:
            torch._foreach_copy_([m for m, _ in buffers], [t for _, t in buffers])


def resolve_device(requested: str, info: DistInfo | None = None) -> torch.device:
    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise UserError(f"--device {requested!r}: expected auto, cpu or cuda")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested}: no CUDA GPU is available to PyTorch here; use --device cpu")
        if requested == "cuda":
            return torch.device("cuda", info.local_rank if info else 0)
        try:
            index = int(requested.partition(":")[2])
        except ValueError:
            raise UserError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. auto = bf16 on GPUs that support it, else fp16; fp32 on the CPU."""
    if device.type == "cpu":
        if requested == "fp16":
            raise UserError("train.precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
        return torch.bfloat16 if requested == "bf16" else None
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]


def environment_info(device: torch.device, info: DistInfo) -> dict[str, Any]:
    env: dict[str, Any] = {
        "srtool_version": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "hostname": platform.node(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "device": str(device), "world_size": info.world_size,
        "cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "torch_threads": torch.get_num_threads(),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.type == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name(device)
        env["gpu_count"] = torch.cuda.device_count()
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def load_init_weights(spec: str, preset: Preset, notice: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Generator weights from a PSNR-stage run directory, an srtool export or a third-party checkpoint
    (anything :func:`srtool.loading.load_model` reads); the architecture must match the preset's."""
    from ..loading import load_model

    model = load_model(spec, device="cpu", precision="fp32", notice=notice)
    if model.network is None or not hasattr(model.network, "config"):
        raise UserError(f"--init-from {spec}: not a generator network srtool can train (got {model.name})")
    want, got = preset.model.generator.model_dump(), model.network.config.model_dump()
    if want != got:
        diff = ", ".join(f"{k}: {got.get(k)!r} vs preset {want.get(k)!r}" for k in sorted(set(want) | set(got))
                         if want.get(k) != got.get(k))
        raise UserError(f"--init-from {spec}: its generator does not match the preset's model.generator ({diff})")
    return {k: v.contiguous() for k, v in model.network.state_dict().items()}


class Trainer:
    """Builds everything a run needs from :class:`TrainOptions`; :meth:`run` trains."""

    def __init__(self, options: TrainOptions, warn: Callable[[str], None] = warn_stderr):
        self._run_lock = self.monitor = None
        try:
            self._set_up(options, warn)
        except BaseException:
            # release the run directory now: the caller's traceback (a notebook's, kept for inspection)
            # keeps this half-built Trainer alive, and with it the lock a retry needs
            self.close()
            raise

    def _set_up(self, options: TrainOptions, warn: Callable[[str], None]) -> None:
        self.options = options
        self.warn = warn
        resuming = options.resume is not None
        # ---- cheap checks first: preset, run directory, dataset names/folders
        if resuming:
            self.run_dir = Path(options.resume).expanduser()
            self._check_resume_options()
            run_info = runstate.read_run_json(self.run_dir)
            recorded_info = dict(run_info)
            self.preset = self._resume_preset(run_info)
            data = [Path(p) for p in run_info["data"]]
            init_from = run_info.get("init_from")
            vgg_weights = options.vgg_weights or run_info.get("vgg_weights")
            allow_random_vgg = options.allow_random_vgg or bool(run_info.get("allow_random_vgg"))
        else:
            if not options.preset:
                raise UserError("give --preset NAME|FILE (or --resume RUN_DIR)")
            self.preset = load_preset(options.preset, options.overrides)
            if options.out is None:
                raise UserError("give --out RUN_DIR (where checkpoints, logs and exports go)")
            self.run_dir = Path(options.out).expanduser()  # `--out=~/x`: bash leaves that ~ alone
            check_distinct_data(options.data)
            data = [Path(p).expanduser().resolve() for p in options.data]
            init_from, vgg_weights = runstate.init_weights_file(options.init_from), options.vgg_weights
            allow_random_vgg = options.allow_random_vgg
            # every path absolute (and hashed where it is a file): --resume works from any directory
            init_path, init_sha = runstate.record_path(init_from)
            run_info = {
                "preset_source": runstate.record_path(options.preset)[0], "overrides": list(options.overrides),
                "data": [str(p) for p in data], "init_from": init_path, "init_from_sha256": init_sha,
                "vgg_weights": runstate.record_path(vgg_weights, ("imagenet", "random"), hash_file=False)[0],
                "srtool_version": __version__,
            }
            if allow_random_vgg:
                run_info["allow_random_vgg"] = True
        p, t = self.preset, self.preset.train
        self.total = t.total_iters
        self.dist = init_distributed("cuda" if options.device.startswith("cuda") or
                                     (options.device == "auto" and torch.cuda.is_available()) else "cpu")
        if not self.dist.is_main:
            self.warn = lambda message: None  # rank 0 speaks for the run
        # rank 0 holds the run directory before anything in it is deleted or rewritten
        if self.dist.is_main and self.run_dir.is_dir():
            self._run_lock = runstate.RunLock(self.run_dir)
        if not resuming:
            self._check_out_dir()
        else:
            runstate.check_recorded_paths(self.run_dir, run_info, check_vgg=options.vgg_weights is None,
                                          check_init=options.restart)
        check_data_paths(data)
        self.val_datasets = runstate.validation_folders(self.run_dir, run_info, self.preset.validation.datasets,
                                                        self.preset.scale)
        self.device = resolve_device(options.device, self.dist)
        self.amp_dtype = resolve_precision(t.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # ---- VGG19 and --init-from weights: any error here comes before training starts
        if p.loss.perceptual is not None and str(vgg_weights) == "random" and not allow_random_vgg:
            raise UserError("--vgg-weights random: random VGG19 features make the perceptual loss meaningless "
                            "(about 1e-15); give the ImageNet weights, or pass --allow-random-vgg for a smoke test")
        self.loss = GeneratorLoss(p.loss, vgg_weights=vgg_weights or "imagenet").to(self.device)
        # what the exports and run.json record: the VGG19 file really used and the --init-from weights
        self.weights_used = runstate.weights_record((vgg_weights or "imagenet") if self.loss.vgg is not None else None,
                                                    run_info)
        if not resuming and "vgg_weights" in self.weights_used:
            run_info["vgg_weights_file"] = self.weights_used["vgg_weights"]["path"]
            run_info["vgg_weights_sha256"] = self.weights_used["vgg_weights"]["sha256"]
        from .validation import check_validation_data, plan_validation

        self.val_plan, self.val_scorer = plan_validation(p, self.warn, str(self.device)) if self.val_datasets else (None, None)
        if self.val_plan is not None:
            check_validation_data(self.val_datasets, self.val_plan, p.scale)
        init_state = None
        if init_from and not resuming:
            init_state = load_init_weights(init_from, p, self.warn)
        elif p.stage == "gan" and not resuming:
            self.warn(
                f"GAN stage '{p.name}' is starting from a RANDOM generator: SRGAN/ESRGAN start from a trained "
                "PSNR-stage generator (--init-from RUN_DIR or EXPORT, e.g. a `srtool train --preset srresnet` or "
                "`--preset rrdbnet` run); from scratch the adversarial training is slow and unstable"
            )
        # ---- data
        if not self.dist.is_main:
            barrier(self.dist)  # rank 0 prepares a plain image folder into the cache first
        stores, labels = open_stores(data, p.scale, options.cache_dir, progress=options.progress)
        if self.dist.is_main:
            barrier(self.dist)
        self.source = CropSource(stores, labels, t.hr_crop, p.scale, warn=self.warn)
        self.dataset = KeyedCropDataset(self.source, t.seed, hflip=p.data.hflip, rot90=p.data.rot90)
        # ---- networks, optimisers, schedules
        torch.manual_seed(t.seed)
        self.generator = build_network(p.model.generator)
        if init_state is not None:
            self.generator.load_state_dict(init_state)
        self.generator.to(self.device)
        self.discriminator = build_network(p.model.discriminator).to(self.device) if p.stage == "gan" else None
        memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        for net in (self.generator, self.discriminator):
            if net is not None:
                net.to(memory_format=memory_format)
        self.memory_format = memory_format
        self.ema = EMA(self.generator, t.ema_decay)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lambda it: lr_factor(p, it))
        self.opt_d = self.sched_d = None
        if self.discriminator is not None:
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=t.discriminator_lr or t.lr,
                                          betas=t.betas, weight_decay=t.weight_decay)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lambda it: lr_factor(p, it))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda")
        self.g_run, self.d_run = self._wrap(self.generator), self._wrap(self.discriminator)
        # ---- state
        self.iteration = 0
        self.skipped = 0
        self.best: dict[str, Any] | None = None
        self.last_scores: dict[str, dict[str, float]] | None = None
        self.checkpoints = CheckpointDir(self.run_dir, p.checkpoint.keep_last)
        self._signal: int | None = None
        resumed_from = None
        if resuming:
            found = None
            if not options.restart:
                networks = {"generator": self.generator, "ema": self.ema.module, "discriminator": self.discriminator}
                found = runstate.newest_good_checkpoint(
                    [path for _, path in self.checkpoints.numbered()], load_checkpoint,
                    lambda state: runstate.validate_checkpoint(state, networks), self.warn, set_aside=self.dist.is_main)
            elif self.dist.is_main:
                runstate.restart_aside(self.run_dir, self.warn)
            barrier(self.dist)
            if found is None:
                if not options.restart:
                    self.warn(f"{self.run_dir}: no checkpoint yet; starting the run again from iteration 0")
                    if self.dist.is_main:
                        self._reconcile_exports(None)
                if init_from:
                    self.generator.load_state_dict(load_init_weights(init_from, p, self.warn))
                    self.ema = EMA(self.generator, t.ema_decay)
            else:
                self._load_state(found[1])
                if self.iteration > self.total:  # e.g. --resume RUN --set train.epochs=1 on a longer run
                    raise UserError(
                        f"--resume {self.run_dir}: the run is at iteration {self.iteration}, past the {self.total} "
                        "iterations its schedule would now have; a run can be shortened only down to where it is"
                    )
                if self.dist.is_main:
                    self._reconcile_exports(found[1])
            resumed_from = self.iteration
        self.monitor = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self._run_lock is None:  # a new folder: another training may have made a run there meanwhile
                self._run_lock = runstate.RunLock(self.run_dir)
                if not resuming and any((self.run_dir / name).exists() for name in RUN_FILES):
                    raise UserError(f"--out {self.run_dir}: another srtool train made a run there while this one "
                                    "was setting up; nothing of it was replaced. Choose another --out")
            write_text_atomic(self.run_dir / "preset.toml", dump_toml(p))
            # the preset as the run uses it: a hand edit of preset.toml is checked against it on --resume
            if not resuming:
                run_info["preset"] = p.model_dump(mode="json")
                write_text_atomic(self.run_dir / "run.json", json.dumps(run_info, indent=2) + "\n")
            elif recorded_info.get("preset") != p.model_dump(mode="json"):
                write_text_atomic(self.run_dir / "run.json",
                                  json.dumps({**recorded_info, "preset": p.model_dump(mode="json")}, indent=2) + "\n")
            if self.val_plan is not None:
                from .validation import VALIDATION_FILE

                write_text_atomic(self.run_dir / VALIDATION_FILE, json.dumps(self.val_plan.record(), indent=2) + "\n")
            write_text_atomic(self.run_dir / "environment.json",
                              json.dumps(environment_info(self.device, self.dist), indent=2) + "\n")
            from .monitor import RunMonitor

            self.monitor = RunMonitor(self.run_dir, f"{p.name} ({p.stage} stage)", self.iteration, self.total,
                                      progress=options.progress, resume_from=resumed_from, warn=self.warn,
                                      quiet=options.quiet)
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._watch = NonFiniteWatch()

    # ------------------------------------------------------------------------------- set-up helpers

    def _check_resume_options(self) -> None:
        o = self.options
        extra = [name for name, v in (("--preset", o.preset), ("--data", o.data),
                                      ("--init-from", o.init_from), ("--out", o.out)) if v]
        if extra:
            raise UserError(f"--resume continues {o.resume} with its saved preset and data; drop {', '.join(extra)}")
        if not (self.run_dir / "run.json").is_file() or not (self.run_dir / "preset.toml").is_file():
            raise UserError(f"--resume {self.run_dir}: not a training run directory (no run.json / preset.toml)")
        runstate.check_resumable(self.run_dir, [p for _, p in CheckpointDir(self.run_dir, 1).numbered()],
                                 self.run_dir / "checkpoints", o.restart)

    def _resume_preset(self, run_info: dict[str, Any]) -> Preset:
        """The run's saved preset; ``--set`` on resume may change only the schedule's length (extend a run).
        ``preset.toml`` edited by hand since the run wrote it follows the same rule: its changes are checked
        against the preset ``run.json`` recorded (runs of older srtool versions recorded none)."""
        saved_path = str(self.run_dir / "preset.toml")
        saved = load_preset(saved_path)
        recorded = run_info.get("preset")
        if isinstance(recorded, dict):
            edited = _changed_fields(recorded, saved.model_dump(mode="json"))
            refused = [k for k in edited if k not in RESUMABLE_FIELDS]
            if refused:
                before, after = _flatten(recorded), _flatten(saved.model_dump(mode="json"))
                shown = ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in refused[:4])
                raise UserError(
                    f"{saved_path}: edited since the run wrote it ({shown}); --resume may change only "
                    f"{', '.join(RESUMABLE_FIELDS)} (as with --set). Put the file back, or start a new run with "
                    "the edited preset (`srtool train --preset FILE`)"
                )
            if edited:
                self.warn(f"{saved_path}: {', '.join(edited)} edited by hand; the run continues with them, as "
                          "with --resume --set")
        if not self.options.overrides:
            return saved
        changed = load_preset(saved_path, self.options.overrides)
        refused = [k for k in _changed_fields(saved.model_dump(mode="json"), changed.model_dump(mode="json"))
                   if k not in RESUMABLE_FIELDS]
        if refused:
            raise UserError(
                f"--resume {self.run_dir}: --set may change only {', '.join(RESUMABLE_FIELDS)} of a run "
                f"(to extend or shorten it); refused: {', '.join(refused)}. Start a new run for other changes"
            )
        return changed

    def _check_out_dir(self) -> None:
        if self.options.restart:
            raise UserError("--restart goes with --resume RUN_DIR (to start an existing run again from iteration 0)")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"--out {self.run_dir}: exists and is not a folder; give a new or existing run directory")
        present = [n for n in RUN_FILES if (self.run_dir / n).exists()]
        if present and "preset.toml" not in present:  # a run writes it first: these are someone else's files
            raise UserError(f"--out {self.run_dir}: holds {', '.join(present)} but no srtool run (no preset.toml); "
                            "choose another folder (nothing there is replaced, not even with --overwrite)")
        if present and not self.options.overwrite:
            raise UserError(
                f"--out {self.run_dir} already holds a run ({', '.join(present)}): continue it with "
                f"`srtool train --resume {self.run_dir}` or start over with --overwrite"
            )
        if present and self.dist.is_main:
            for name in present:
                path = self.run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        barrier(self.dist)  # every rank passes here exactly once, whatever it saw

    def _wrap(self, net: nn.Module | None) -> nn.Module | None:
        if net is None:
            return None
        run: nn.Module = net
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if self.device.type == "cuda" and self.preset.train.sync_batch_norm:
                run = nn.SyncBatchNorm.convert_sync_batchnorm(run)
            run = DDP(run, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.preset.train.compile:
            run = torch.compile(run, mode=self.preset.train.compile_mode)
        return run

    # --------------------------------------------------------------------------------- state I/O

    def state_dict(self) -> dict[str, Any]:
        state = {
            "iteration": self.iteration, "skipped_steps": self.skipped, "best": self.best,
            "generator": self.generator.state_dict(), "ema": self.ema.module.state_dict(),
            "optimizer_g": self.opt_g.state_dict(), "scheduler_g": self.sched_g.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": capture_rng_state(),
            "data": {"seed": self.preset.train.seed, "next_iteration": self.iteration,
                     "global_batch": self.preset.train.batch_size * self.dist.world_size,
                     "world_size": self.dist.world_size, "samples": len(self.source),
                     "fingerprint": self.source.fingerprint()},
        }
        if self.discriminator is not None:
            state.update(discriminator=self.discriminator.state_dict(), optimizer_d=self.opt_d.state_dict(),
                         scheduler_d=self.sched_d.state_dict())
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.ema.module.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["optimizer_g"])
        self.sched_g.load_state_dict(state["scheduler_g"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["optimizer_d"])
            self.sched_d.load_state_dict(state["scheduler_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.skipped = int(state.get("skipped_steps", 0))
        self.best = state.get("best")
        restore_rng_state(state["rng"])
        data = state["data"]
        if data["global_batch"] != self.preset.train.batch_size * self.dist.world_size:
            self.warn(f"resuming with a global batch of {self.preset.train.batch_size * self.dist.world_size} "
                      f"instead of {data['global_batch']}: the data order is not the original run's")
        if data["fingerprint"] != self.source.fingerprint():
            self.warn("the training data differ from the checkpoint's: the data order is not the original run's")

    # ------------------------------------------------------------------------------------ one step

    def _batch(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        return x.contiguous(memory_format=self.memory_format)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def _backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def _apply(self, optimizer: torch.optim.Optimizer, params) -> None:
        if self.preset.train.grad_clip_norm > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.preset.train.grad_clip_norm)
        self.scaler.step(optimizer)

    def step(self, lr_images: torch.Tensor, hr_images: torch.Tensor) -> tuple[dict[str, torch.Tensor] | None, bool]:
        """One training iteration; returns (loss terms or None if skipped, stop requested on any rank)."""
        p = self.preset
        if p.train.compile and p.train.compile_mode == "reduce-overhead" and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be reused now
        lr, hr = self._batch(lr_images), self._batch(hr_images)
        d_raw = self.discriminator
        with self._autocast():
            sr = self.g_run(lr)
            fake_logits = real_logits = None
            if d_raw is not None:
                d_raw.requires_grad_(False)  # the generator step must not touch D (unwrapped: no DDP hooks)
                fake_logits = d_raw(sr)
                if p.loss.adversarial.kind == "ragan":
                    with torch.no_grad():
                        real_logits = d_raw(hr)
            terms = self.loss(sr, hr, fake_logits, real_logits)
        g_total = sum(terms.values())
        # The generator's backward runs before the discriminator's next forward: that forward updates D's
        # BatchNorm running statistics in place, and a torch.compile'd D does so with a visible in-place
        # copy that invalidates the buffers the generator's graph saved. Gradients of a step that turns out
        # non-finite are discarded below, never applied.
        self._backward(g_total, self.opt_g)
        d_total = None
        if d_raw is not None:
            d_raw.requires_grad_(True)
            with self._autocast():
                d_terms = discriminator_loss(p.loss.adversarial.kind, self.d_run(hr), self.d_run(sr.detach()))
            d_total = sum(d_terms.values())
            terms.update(d_terms)
            self._backward(d_total, self.opt_d)
        totals = torch.stack([g_total.detach().float()] + ([d_total.detach().float()] if d_total is not None else []))
        if p.train.on_nonfinite == "skip":  # must know now whether to apply the step: one host read
            nonfinite, stop = any_flag([not bool(torch.isfinite(totals).all()), self._signal is not None], self.dist)
        else:  # "stop": recorded on the device, acted on at the next log/validation/checkpoint step
            self._watch.record(self.iteration + 1, terms, totals)
            nonfinite, (stop,) = False, any_flag([self._signal is not None], self.dist)
        if nonfinite:
            self.skipped += 1
            self.opt_g.zero_grad(set_to_none=True)
            self.sched_g.step()
            if self.sched_d is not None:
                self.opt_d.zero_grad(set_to_none=True)
                self.sched_d.step()
            return None, stop
        self._apply(self.opt_g, self.generator.parameters())
        if d_total is not None:
            self._apply(self.opt_d, self.discriminator.parameters())
        self.scaler.update()
        self.sched_g.step()
        if self.sched_d is not None:
            self.sched_d.step()
        self.ema.update(self.generator)
        return {k: v.detach() for k, v in terms.items()}, stop

    # ------------------------------------------------------------------------------ around steps

    def validate(self) -> dict[str, dict[str, float]]:
        from ..evaluate import evaluate_dataset
        from ..engine import SRModel

        net = self.ema.module.eval()
        model = SRModel(name=f"{self.preset.name}@{self.iteration}", scale=self.preset.scale, network=net,
                        identity=f"{self.run_dir}@iter{self.iteration}", source=str(self.run_dir),
                        info={"iterations": self.iteration}, device=self.device)
        scores = {}
        for dataset in self.val_datasets:
            # strict: a network failing on a validation image must stop the run, not shrink the mean silently
            # one image at a time: the network is the training's own module, and its cores are shared with
            # the data loader's workers
            result = evaluate_dataset(model, dataset, protocol=self.preset.validation.protocol, progress=False,
                                      strict=True, scorer=self.val_scorer, workers=1)
            scores[result.name] = {m: float(result.mean(m)) for m in self.val_plan.metrics}
        self.last_scores = scores
        return scores

    def export_info(self, scores: dict[str, Any] | None, iteration: int | None = None) -> dict[str, Any]:
        p = self.preset
        return {
            "preset": p.name, "stage": p.stage, "iterations": self.iteration if iteration is None else iteration,
            "weights": "ema",
            "validation": scores or {}, "validation_protocol": p.validation.protocol,
            "hyperparameters": {"train": p.train.model_dump(mode="json"), "loss": p.loss.model_dump(mode="json")},
            "preset_toml": dump_toml(p, with_descriptions=False), "run_dir": str(self.run_dir.resolve()),
            **self.weights_used,
        }

    def export(self, name: str, scores: dict[str, Any] | None, network: nn.Module | None = None,
               iteration: int | None = None) -> Path:
        """``exports/NAME.safetensors`` of the EMA generator now (or of ``network`` at ``iteration``)."""
        from ..models.export import save_export

        network = self.ema.module if network is None else network
        path = self.run_dir / "exports" / f"{name}.safetensors"
        with runstate.disk_full_guard(path, runstate.state_nbytes(network.state_dict()), self.run_dir):
            return save_export(path, network, self.export_info(scores, iteration))

    def _reconcile_exports(self, state: dict[str, Any] | None) -> None:
        """``--resume``: exports and ``best.pt`` written after the checkpoint the run resumes from belong to
        a discarded timeline. A run killed after a validation wrote a new best but before the next
        numbered checkpoint redoes those iterations, and under GPU nondeterminism the redone scores can
        stay below the discarded one's: ``best.safetensors`` would keep weights this run never produced.
        Such files are kept aside (``best.discarded-iterN.*``), the best export is rewritten from the
        resumed checkpoint's own best where its weights are still on disk (the resumed checkpoint or a kept
        numbered one), and otherwise the resumed run's validations pick the best export again."""
        resumed = self.iteration
        want = self.best.get("iteration") if self.best else None
        exports = self.run_dir / "exports"
        found: list[tuple[Path, int | None]] = []  # (file, the iteration it records) that does not belong here
        for name in ("best", "last"):
            path = exports / f"{name}.safetensors"
            if not path.is_file() or (recorded := runstate.export_iteration(path)) is None:
                continue
            ranked = name == "best" and bool(self.val_datasets)
            if (recorded != want) if ranked else (recorded > resumed):
                found.append((path, recorded))
        if self.val_datasets and self.checkpoints.best_path.is_file():
            try:
                recorded = load_checkpoint(self.checkpoints.best_path).get("iteration")
            except UserError:
                recorded = None
            if recorded != want:
                found.append((self.checkpoints.best_path, recorded if isinstance(recorded, int) else None))
        if not found:
            return
        listing = ", ".join(f"{p.relative_to(self.run_dir)} (iteration {it})" for p, it in found)
        aside = [runstate.set_aside_discarded(p, it) for p, it in found]
        names = {p.name for p, _ in found}
        outcome = []
        if "last.safetensors" in names and state is not None:
            self.export("last", None)
            outcome.append(f"last export rewritten from iteration {resumed}")
        if names & {"best.safetensors", "best.pt"} and want is not None:
            source = state if want == resumed else None
            if source is None and self.checkpoints.path_for(want).is_file():
                try:
                    source = load_checkpoint(self.checkpoints.path_for(want))
                except UserError:
                    source = None
            if source is not None:
                from .checkpoint import save_checkpoint

                save_checkpoint(self.checkpoints.best_path, {k: v for k, v in source.items() if k != "format"})
                network = copy.deepcopy(self.ema.module)
                network.load_state_dict(source["ema"])
                self.export("best", self.best.get("scores"), network, want)
                outcome.append(f"best export and best.pt rewritten from iteration {want} (the resumed run's best)")
            elif "best.safetensors" in names:
                self.best = None  # its weights are gone: the resumed run's own validations pick best again
        if self.best is None and "best.safetensors" in names:
            outcome.append("the resumed run's validations pick the best export again")
        since = f"the checkpoint it resumes from (iteration {resumed})" if state is not None else "its start"
        self.warn(f"--resume {self.run_dir}: {listing} came after {since}, from iterations that are redone now; "
                  f"kept aside as {', '.join(a.name for a in aside)}"
                  + (f"; {'; '.join(outcome)}" if outcome else ""))

    def _after_validation(self, scores: dict[str, dict[str, float]], log: bool = True) -> None:
        from ..scoring import METRICS

        select = self.val_plan.select
        score = sum(s[select] for s in scores.values()) / len(scores)
        # NIQE of a flat output (an early GAN generator's) is NaN, and nothing compares better than NaN: a
        # NaN best would be kept for the whole run, so any real score replaces it
        is_best = (self.best is None or self.best.get("metric") != select
                   or (math.isnan(self.best["score"]) and not math.isnan(score))
                   or METRICS[select].better(score, self.best["score"]))
        if is_best:
            self.best = {"iteration": self.iteration, "metric": select, "score": score, "scores": scores}
            from .checkpoint import save_checkpoint

            state = self.state_dict()
            with runstate.disk_full_guard(self.checkpoints.best_path, runstate.state_nbytes(state), self.run_dir):
                save_checkpoint(self.checkpoints.best_path, state)
            self.export("best", scores)
        if log:
            self.monitor.log_validation(self.iteration, scores, is_best)

    def _validate_or_checkpoint(self) -> None:
        """Validate; a validation that fails (an image deleted or damaged during training, no memory left for
        it) checkpoints the iterations done since the last checkpoint before the error stops the run, and
        ``--resume`` validates that iteration first (:meth:`run`)."""
        try:
            scores = self.validate()
        except Exception as exc:
            try:
                self._save()
            except Exception:  # the checkpoint itself failed (disk full): the validation's error is the news
                raise exc from None
            saved = (f"checkpoint saved at iteration {self.iteration}; fix that and continue with "
                     f"`srtool train --resume {self.run_dir}`")
            if isinstance(exc, UserError):
                raise UserError(f"validation at iteration {self.iteration}: {exc}; {saved}") from None
            self.warn(f"validation at iteration {self.iteration} failed: {saved}")
            raise
        self._after_validation(scores)

    def _save(self) -> None:
        state = self.state_dict()
        path = self.checkpoints.path_for(self.iteration)
        with runstate.disk_full_guard(path, runstate.state_nbytes(state), self.run_dir):
            self.checkpoints.save(self.iteration, state)
        self.export("last", self.last_scores)
        if not self.val_datasets:  # validation.datasets = []: nothing ranks the iterations, so best is the last
            self.export("best", None)

    def _raise_if_nonfinite(self) -> None:
        """Stop (``train.on_nonfinite = "stop"``) if a step since the start saw a NaN/inf loss; called on
        every rank before anything is logged, validated or saved."""
        found = self._watch.check(self.dist)
        if found is None:
            return
        iteration, values = found
        latest = self.checkpoints.latest()
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration} ({values}); stopped without saving. "
            f"Last good checkpoint: {latest or 'none yet'}. Lower train.lr, set train.grad_clip_norm, "
            "or set train.on_nonfinite=skip to skip such steps"
        )

    def _log(self) -> None:
        names = list(self._acc)
        means = (torch.stack([self._acc[k] for k in names]) / max(self._acc_n, 1)).tolist() if names else []
        values = {f"loss/{k}": v for k, v in zip(names, means)}
        values["lr"] = self.opt_g.param_groups[0]["lr"]
        if self.skipped:
            values["skipped_steps"] = self.skipped
        self.monitor.log_train(self.iteration, values)
        self._acc, self._acc_n = {}, 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now
        self._signal = signum
        if self.dist.is_main:  # say so now: an iteration (or a validation) can take minutes
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            again = " (Ctrl-C again to leave without a checkpoint)" if signum == signal.SIGINT else ""
            message = f"\n{name}: finishing this iteration, then checkpointing{again}\n"
            try:
                os.write(sys.stderr.fileno(), message.encode())  # async-signal-safe, bypasses the live display
            except (OSError, ValueError, AttributeError):
                pass

    def run(self, until: int | None = None) -> TrainResult:
        """Train up to iteration ``until`` (default: the preset's total), checkpointing on the way."""
        p = self.preset
        end = self.total if until is None else min(until, self.total)
        loader = make_loader(self.dataset, self.iteration, end, p.train.batch_size, p.train.num_workers,
                             self.dist.rank, self.dist.world_size, pin_memory=self.device.type == "cuda")
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        interrupted = None
        if (self.dist.is_main and self.val_datasets and 0 < self.iteration < end
                and self.iteration % p.validation.every == 0 and not self.monitor.validated_at(self.iteration)):
            self._validate_or_checkpoint()  # resumed from a checkpoint saved when its validation failed
        self.generator.train()
        if self.discriminator is not None:
            self.discriminator.train()
        try:
            for lr_images, hr_images in runstate.loader_errors(loader, self.source.stores):
                try:
                    terms, stop = self.step(lr_images, hr_images)
                except torch.OutOfMemoryError:
                    raise UserError(self._oom_message()) from None
                except RuntimeError as exc:
                    if "can't allocate memory" in str(exc) or "out of memory" in str(exc):
                        raise UserError(self._oom_message()) from None
                    raise
                self.iteration += 1
                if terms is not None:
                    for k, v in terms.items():
                        self._acc[k] = self._acc.get(k, 0.0) + v.float()
                    self._acc_n += 1
                if stop:
                    interrupted = signal.Signals(self._signal).name if self._signal else "signal on another rank"
                done = self.iteration == end
                if self._reads_back(done, stop):
                    self._raise_if_nonfinite()
                if self.dist.is_main:
                    self.monitor.advance(self.iteration)
                    if self.iteration % p.log.every == 0 or done or stop:
                        self._log()
                    if self.val_datasets and (self.iteration % p.validation.every == 0 or
                                              (self.iteration == self.total and not stop)):
                        self._validate_or_checkpoint()
                        self.generator.train()
                    if self.iteration % p.checkpoint.every == 0 or done or stop:
                        self._save()
                if stop:
                    break
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        validated = self.dist.is_main and self.monitor.validated_at(self.iteration)
        if (self.dist.is_main and not interrupted and self.iteration == self.total and self.val_datasets
                and (not validated or self.best is None)):
            # a run that reached its end without the final validation (stopped on its last iteration, or
            # shortened with --resume --set train.epochs=N down to where it was): its last weights are ranked
            # too; so are they when a discarded timeline's best was set aside and nothing since replaced it
            self._after_validation(self.validate(), log=not validated)
            self._save()
        if self.dist.is_main and self.iteration == 0 and not (self.run_dir / "exports" / "last.safetensors").exists():
            self._save()
        barrier(self.dist)
        exports = {n: self.run_dir / "exports" / f"{n}.safetensors" for n in ("best", "last")}
        if interrupted and self.monitor is not None:
            self.monitor.console_print(
                f"[yellow]interrupted ({interrupted}) at iteration {self.iteration}[/yellow]: checkpoint saved; "
                f"continue with `srtool train --resume {self.run_dir}`"
            )
        return TrainResult(self.run_dir, self.iteration, self.total, interrupted, self.skipped, self.best,
                           self.last_scores, {n: q for n, q in exports.items() if q.exists()}, self.dist.rank)

    def _reads_back(self, done: bool, stop: bool) -> bool:
        """Whether this iteration logs, validates or saves (the only iterations that read the device)."""
        p, it = self.preset, self.iteration
        return (done or stop or it % p.log.every == 0 or it % p.checkpoint.every == 0
                or (bool(self.val_datasets) and (it % p.validation.every == 0 or it == self.total)))

    def _oom_message(self) -> str:
        t = self.preset.train
        return (f"out of memory at train.batch_size={t.batch_size}, train.hr_crop={t.hr_crop}: try a smaller batch or "
                f"crop, e.g. --set train.batch_size={max(1, t.batch_size // 2)} or --set train.hr_crop="
                f"{max(self.preset.scale * 8, t.hr_crop // 2 // self.preset.scale * self.preset.scale)}")

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        if self._run_lock is not None:
            self._run_lock.close()
            self._run_lock = None


def train(options: TrainOptions) -> TrainResult:
    """Run (or resume) a training run; the entry point of ``srtool train``."""
    trainer = None
    try:
        trainer = Trainer(options)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        if trainer is not None:
            shutdown(trainer.dist)
