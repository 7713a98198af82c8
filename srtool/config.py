"""Presets: the typed, validated, single source of every training hyperparameter.

A preset is a TOML file (``presets/*.toml`` ships with srtool; any path works too) loaded into the
:class:`Preset` pydantic model: unknown keys are errors (``extra="forbid"``), numbers are range-checked,
choices are enums, and every field has a description that ``srtool presets show`` prints.
Command-line overrides (``--set train.lr=2e-4``) are applied to the raw data *before* validation, so
they are checked exactly like the file. Errors name the file, the dotted field path and what is allowed.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .tomlio import parse_toml, toml_value
from .models.configs import (
    DISCRIMINATOR_CONFIGS, GENERATOR_CONFIGS, AnyDiscriminatorConfig, GeneratorConfig, describe_problem,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Strict):
    generator: GeneratorConfig = Field(description="Generator architecture and hyperparameters.")
    discriminator: AnyDiscriminatorConfig | None = Field(
        None, description="Discriminator (GAN stages only): vgg_discriminator (SRGAN, the study) or vgg_style_128 (ESRGAN)."
    )


class PixelLoss(Strict):
    criterion: Literal["l1", "mse"] = Field(description="Pixel loss between SR and HR.")
    weight: float = Field(1.0, ge=0, description="Weight of the pixel loss.")


class PerceptualLoss(Strict):
    layer: str = Field("conv5_4", pattern=r"^conv[1-5]_[1-4]$", description="VGG19 layer, e.g. conv5_4.")
    before_activation: bool = Field(
        True, description="Features before the ReLU (ESRGAN) or after it (SRGAN's phi_5,4)."
    )
    criterion: Literal["l1", "mse"] = Field("l1", description="Distance between feature maps.")
    feature_scale: float = Field(
        1.0, gt=0, description="Features are multiplied by this before the distance (SRGAN: 1/12.75)."
    )
    weight: float = Field(1.0, ge=0, description="Weight of the perceptual loss.")


class AdversarialLoss(Strict):
    kind: Literal["vanilla", "ragan"] = Field(
        description="vanilla = BCE (SRGAN); ragan = relativistic average GAN with real and fake terms (ESRGAN)."
    )
    weight: float = Field(ge=0, description="Weight of the adversarial term in the generator loss.")


class LossSection(Strict):
    pixel: PixelLoss | None = Field(None, description="Pixel-space loss.")
    perceptual: PerceptualLoss | None = Field(None, description="VGG19 feature loss.")
    adversarial: AdversarialLoss | None = Field(None, description="GAN loss (GAN stages only).")


class SchedulerSection(Strict):
    kind: Literal["constant", "multistep", "cosine"] = Field("constant", description="Learning-rate schedule.")
    milestones: list[int] = Field(default_factory=list, description="multistep: iterations where lr is multiplied by gamma.")
    gamma: float = Field(0.5, gt=0, le=1, description="multistep: factor applied at each milestone.")
    eta_min: float = Field(1e-7, ge=0, description="cosine: final learning rate.")


class TrainSection(Strict):
    lr: float = Field(1e-4, gt=0, le=1, description="Adam learning rate of the generator.")
    discriminator_lr: float | None = Field(None, gt=0, le=1, description="Adam lr of the discriminator (default: lr).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas, each in [0, 1).")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    batch_size: int = Field(16, ge=1, le=4096, description="HR/LR crop pairs per iteration (per process under DDP).")
    hr_crop: int = Field(128, ge=8, le=2048, description="Side of the HR training crop; LR crop = hr_crop / scale.")
    epochs: int = Field(30, ge=1, description="Epochs; total iterations = epochs * iters_per_epoch.")
    iters_per_epoch: int = Field(5000, ge=1, description="Iterations per epoch.")
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection, description="Learning-rate schedule.")
    grad_clip_norm: float = Field(0.0, ge=0, description="Clip gradients to this global norm; 0 disables.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of generator weights; 0 disables EMA.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on GPUs that support it, else fp16 with GradScaler on CUDA, fp32 on the CPU."
    )
    channels_last: bool = Field(True, description="Use channels_last memory format.")
    compile: bool = Field(False, description="Wrap the networks in torch.compile.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default",
        description="torch.compile mode with train.compile. reduce-overhead captures the networks' forward and "
        "backward as CUDA graphs (one launch per graph instead of one per kernel; shapes are static since batch "
        "and crop never change); compile time is spent in the first iterations.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of every random number generator (0 to 2**32-1).")
    num_workers: int = Field(4, ge=0, le=128, description="Data-loader worker processes (at most the number of usable CPU cores).")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss stops the run (stop) or skips that step (skip)."
    )
    sync_batch_norm: bool = Field(
        True,
        description="Under DDP on CUDA, convert BatchNorm to SyncBatchNorm (statistics over the global batch); "
        "on the CPU (gloo) BatchNorm stays per rank.",
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for i, beta in enumerate(betas):
            if not (math.isfinite(beta) and 0 <= beta < 1):  # Adam's own check misses nan and fails mid-run
                raise ValueError(f"beta{i + 1} must be a finite number in [0, 1)")
        return betas

    @property
    def total_iters(self) -> int:
        return self.epochs * self.iters_per_epoch


class DataSection(Strict):
    hflip: bool = Field(True, description="Random horizontal flips.")
    rot90: bool = Field(True, description="Random 90-degree rotations (and vertical flips).")


class ValidationSection(Strict):
    every: int = Field(5000, ge=1, description="Validate every this many iterations.")
    datasets: list[str] = Field(
        default_factory=lambda: ["Set5", "Set14"],
        description="Benchmark folders or prepared dataset names; [] = no validation (the best export is the last).",
    )
    protocol: Literal["y", "rgb", "y-float"] = Field("y", description="Metric protocol (see srtool eval).")
    metrics: list[Literal["psnr", "ssim", "lpips", "niqe"]] = Field(
        default_factory=lambda: ["psnr", "ssim"],
        description="Metrics computed at each validation (LPIPS needs its weights; dropped with a notice if absent).",
    )
    select: Literal["auto", "psnr", "ssim", "lpips", "niqe"] = Field(
        "auto", description="Metric that picks the best checkpoint; auto: psnr (PSNR stage), lpips if available (GAN).",
    )
    lpips_net: Literal["alex", "vgg"] = Field("alex", description="LPIPS backbone.")
    lpips_weights: str | None = Field(
        None, description="torchvision ImageNet weights of the LPIPS backbone (default: $SRTOOL_LPIPS_WEIGHTS, hub cache).",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_metric(cls, data: Any) -> Any:
        """Run directories written before ``select`` existed store ``metric = "psnr"``: read it as ``select``."""
        if isinstance(data, dict) and "metric" in data:
            data = dict(data)
            legacy = data.pop("metric")
            if "select" in data and data["select"] != legacy:
                raise ValueError("give validation.select only (validation.metric is its old name)")
            data["select"] = legacy
        return data

    @model_validator(mode="after")
    def _select_is_validated(self) -> "ValidationSection":
        if len(set(self.metrics)) != len(self.metrics) or not self.metrics:
            raise ValueError("validation.metrics must name each metric once (at least one)")
        if self.select != "auto" and self.select not in self.metrics:
            raise ValueError(f"validation.select = {self.select!r} must be one of validation.metrics {self.metrics}")
        return self


class CheckpointSection(Strict):
    every: int = Field(5000, ge=1, description="Checkpoint every this many iterations.")
    keep_last: int = Field(3, ge=1, le=1000, description="Keep this many most recent checkpoints (plus the best).")


class LogSection(Strict):
    every: int = Field(100, ge=1, description="Log losses every this many iterations.")


class Preset(Strict):
    """A complete, validated training configuration."""

    name: str = Field(description="Preset name.")
    description: str = Field("", description="What this preset reproduces.")
    stage: Literal["psnr", "gan"] = Field(description="psnr = generator only; gan = generator + discriminator.")
    model: ModelSection = Field(description="Networks.")
    loss: LossSection = Field(description="Loss terms.")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimisation.")
    data: DataSection = Field(default_factory=DataSection, description="Augmentation.")
    validation: ValidationSection = Field(default_factory=ValidationSection, description="Validation.")
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection, description="Checkpoints.")
    log: LogSection = Field(default_factory=LogSection, description="Logging.")

    @property
    def scale(self) -> int:
        return self.model.generator.scale

    @model_validator(mode="after")
    def _consistent(self) -> "Preset":
        if self.train.hr_crop % self.scale:
            raise ValueError(f"train.hr_crop ({self.train.hr_crop}) must be a multiple of the scale ({self.scale})")
        if self.stage == "gan":
            if self.model.discriminator is None or self.loss.adversarial is None:
                raise ValueError("stage 'gan' needs [model.discriminator] and [loss.adversarial]")
            d = self.model.discriminator
            if self.train.hr_crop < d.min_input_size():
                raise ValueError(
                    f"train.hr_crop ({self.train.hr_crop}) is below the discriminator's minimum input {d.min_input_size()}"
                )
            if d.max_input_size() is not None and self.train.hr_crop > d.max_input_size():
                raise ValueError(f"train.hr_crop ({self.train.hr_crop}) must be {d.max_input_size()} for the "
                                 f"{d.arch} discriminator (its dense layer takes exactly that size)")
        else:
            if self.model.discriminator is not None or self.loss.adversarial is not None:
                raise ValueError("stage 'psnr' takes no discriminator and no adversarial loss")
        if not (self.loss.pixel or self.loss.perceptual):
            raise ValueError("loss: at least one of pixel or perceptual is needed")
        if any(m <= 0 for m in self.train.scheduler.milestones):
            raise ValueError("train.scheduler.milestones must be positive iteration numbers")
        return self


# ----------------------------------------------------------------------------------------- loading


def _presets_root():
    """The shipped presets: the installed ``srtool.presets`` package, or ``presets/`` of a source tree
    used without installing (``PYTHONPATH=.``), where the package-dir mapping does not exist."""
    try:
        return resources.files("srtool.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _presets_root().iterdir() if p.name.endswith(".toml"))


def _read_preset_source(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Raw TOML data and a label for error messages: a shipped name or a file path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file() or "/" in name_or_path:
        if not path.is_file():
            raise UserError(f"preset file not found: {path}")
        label = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{label}: cannot read ({exc.strerror or exc})") from None
    else:
        resource = _presets_root() / f"{name_or_path}.toml"
        if not resource.is_file():
            raise UserError(f"unknown preset {name_or_path!r}; shipped presets: {', '.join(preset_names())} (or give a .toml path)")
        data, label = resource.read_bytes(), f"presets/{name_or_path}.toml"
    return parse_toml(data, label), label


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value). Values are TOML literals; bare words are strings."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=2e-4")
    raw = raw.strip()
    try:
        value = parse_toml(f"v = {raw}", f"--set {key}")["v"]
    except UserError:
        if raw.lstrip().startswith(("[", "{")):  # meant as a list or table: say why it is not one
            raise
        value = raw
    return key.split("."), value


ARCHITECTURES = {**GENERATOR_CONFIGS, **DISCRIMINATOR_CONFIGS}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items in order, ``*.arch`` ones first: changing a section's architecture drops the
    file's other keys of that section (they describe the old network); later ``--set`` keys apply to the new one."""
    parsed = [(item, *parse_override(item)) for item in overrides]
    parsed.sort(key=lambda entry: entry[1][-1] != "arch")  # stable: arch changes first, the rest in order
    for item, path, value in parsed:
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        if path[-1] == "arch" and node.get("arch") != value:
            node.clear()
        node[path[-1]] = value
    return data


def _fields_at(loc: tuple[Any, ...]) -> list[str] | None:
    """Names of the fields allowed at the model reached by ``loc`` (for 'unknown field' errors)."""
    import typing

    model: Any = Preset
    for part in loc:
        if model is None and part in ARCHITECTURES:  # the discriminated-union tag, e.g. model.generator.rrdbnet
            model = ARCHITECTURES[part]
            continue
        field = getattr(model, "model_fields", {}).get(part) if model is not None else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif len(candidates) == 1:
            model = candidates[0]
        else:
            model = None  # a union of several models: the next loc element is its tag
    return list(getattr(model, "model_fields", {}) or []) or None


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: dotted.path: message (got value)``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        shown = [str(p) for i, p in enumerate(loc)
                 if not (p in ARCHITECTURES and i > 0 and loc[i - 1] in ("generator", "discriminator"))]
        path = ".".join(shown) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(loc[:-1])
            msg = "unknown field" + (f"; allowed fields: {', '.join(allowed)}" if allowed else "")
        else:
            msg = describe_problem(err)
        lines.append(f"{source}: {path}: {msg}{_HINTS.get(path, '') if err['type'] not in ('extra_forbidden', 'value_error') else ''}")
    return "\n".join(lines)


_HINTS = {
    "train.betas": "; expected two numbers, each in [0, 1), e.g. train.betas=[0.9, 0.999]",
    "validation.datasets": "; expected a list of dataset names or folders, e.g. ['Set5', 'Set14'], "
                           "or [] for no validation",
}


def load_preset(name_or_path: str, overrides: list[str] | None = None) -> Preset:
    """Load, override and validate a preset by shipped name or TOML path."""
    data, label = _read_preset_source(name_or_path)
    data = apply_overrides(data, overrides or [])
    try:
        return Preset.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, label + (" (with --set overrides)" if overrides else ""))) from None


def dump_toml(model: BaseModel, with_descriptions: bool = True) -> str:
    """Render a resolved preset as TOML, each value commented with its field description.

    The one serializer of presets (``presets show``, a run's ``preset.toml``, export metadata): its output
    loads back to an equal preset and renders to the same text (strings are escaped by :func:`toml_value`)."""

    out: list[str] = []

    def emit(obj: BaseModel, prefix: str) -> None:
        tables = []
        for name, field in type(obj).model_fields.items():
            value = getattr(obj, name)
            if isinstance(value, BaseModel):
                tables.append((name, value, field.description))
            elif value is not None:
                comment = f"  # {field.description}" if with_descriptions and field.description else ""
                out.append(f"{name} = {toml_value(value)}{comment}")
        for name, value, description in tables:
            out.append("")
            out.append(f"[{prefix}{name}]" + (f"  # {description}" if with_descriptions and description else ""))
            emit(value, f"{prefix}{name}.")

    emit(model, "")
    return "\n".join(out).strip() + "\n"
