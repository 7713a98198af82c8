"""Perceptual quality: NIQE (no-reference) and LPIPS (full-reference), the other half of a GAN-SR table.

PSNR and SSIM reward blur; the GAN-SR literature (PIRM 2018 and every paper since) reports these two
as well. Both are **lower = better**. Same input conventions as :mod:`srtool.metrics`: ``uint8``
arrays are 0..255, float arrays are network outputs in [0, 1] (scaled, clamped and rounded to uint8
levels, as published SR images are).

NIQE (Mittal, Soundararajan, Bovik 2013)
    A faithful port of the official MATLAB ``niqe.m``/``computequality.m``: the Y channel of MATLAB
    ``rgb2ycbcr`` rounded to integers (grey images as they are), cropped to whole 96x96 blocks; at
    two scales (the second made by MATLAB ``imresize(im, 0.5)`` -- :func:`srtool.resize.imresize`,
    symmetric borders as current MATLAB) the image is normalised by its local Gaussian mean and
    deviation (7x7, sigma 7/6, replicated borders), every block gives 18 features of asymmetric
    generalised Gaussian fits, and the score is the distance between the fitted multivariate Gaussian
    and the published pristine model (``srtool/data/niqe_pris_params.npz``, see NOTICE.md there). No
    border is cropped. ``tests/test_perceptual.py`` reproduces MATLAB's 5.72957338 on the reference
    image within 1e-6.

    One subtlety decides the last digits: where a 7x7 neighbourhood is flat, MATLAB's filter returns
    the pixel value itself, so the normalised value is exactly 0 and the fits (which split values into
    < 0 and > 0) ignore it. A float64 sum of the normalised window returns c(1 +- 1e-16) instead, and
    that 1e-16 moves the score by ~1e-3. Flat neighbourhoods are therefore set exactly.
    Everything is vectorised over blocks (BasicSR's per-block Python loop is ~10x slower; see
    ``benchmarks/bench_perceptual.py``).

LPIPS (Zhang, Isola, Efros, Shechtman, Wang 2018), version 0.1
    RGB scaled to [-1, 1] as the reference does, then the reference's shift/scale layer, a frozen
    ImageNet backbone (``alex``: AlexNet's five ReLU outputs; ``vgg``: VGG16's relu1_2 ... relu5_3),
    each feature map unit-normalised over channels, squared differences weighted by the learned
    1x1 linear layers, averaged over space and summed over layers. Grey images are repeated to three
    channels. No border crop unless asked.

    *Calibration* weights (the linear layers): the ``lpips`` package's ``weights/v0.1/{net}.pth``
    (BSD-2-Clause), loaded with ``torch.load(weights_only=True)``. *Backbone* weights: torchvision's
    ImageNet checkpoints (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``), from the torch hub
    cache or downloaded there on first use (hash-checked), or from a local file given as
    ``lpips_weights`` (``--lpips-weights``) or ``$SRTOOL_LPIPS_WEIGHTS``. Without them
    :func:`load_lpips` raises a :class:`~srtool.errors.UserError` saying how to get them: LPIPS
    computed with random backbone weights is not LPIPS, so it is never computed silently.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import UserError
from .metrics import rgb_to_y, shave, to_levels

# ------------------------------------------------------------------------------------------- NIQE

NIQE_BLOCK = 96
_NIQE_WINDOW = 7
_NIQE_FEATURES = 18  # per scale
_GAM = 0.2 + 0.001 * np.arange(9801)  # MATLAB 0.2:0.001:10
_FLAT_CANDIDATE = 1e-6  # local variance below which a neighbourhood may be exactly flat
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # computefeature.m's circshift offsets (rows, cols)


@functools.lru_cache(maxsize=1)
def niqe_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu 36, cov 36x36, 1-D window 7) of the published pristine model shipped in srtool/data."""
    with resources.files("srtool.data").joinpath("niqe_pris_params.npz").open("rb") as handle:
        with np.load(handle) as params:
            mu = params["mu_pris_param"].reshape(-1).astype(np.float64)
            cov = params["cov_pris_param"].astype(np.float64)
            window = params["gaussian_window"].astype(np.float64)
    line = window.sum(axis=1)  # fspecial('gaussian') is separable: window = outer(line, line)
    if not np.allclose(np.outer(line, line), window, rtol=0, atol=1e-15):
        raise RuntimeError("niqe_pris_params.npz: the Gaussian window is not separable (damaged file?)")
    return mu, cov, line


@functools.lru_cache(maxsize=1)
def _r_gam() -> np.ndarray:
    """estimateaggdparam.m's table r(gamma) = Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g)), increasing in g."""
    from scipy.special import gamma

    table = gamma(2.0 / _GAM) ** 2 / (gamma(1.0 / _GAM) * gamma(3.0 / _GAM))
    if not np.all(np.diff(table) > 0):
        raise RuntimeError("NIQE's r(gamma) table is not increasing; nearest-neighbour search would be wrong")
    return table


def _aggd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """estimateaggdparam.m for every row of ``values`` (n, m): (alpha, beta_left, beta_right), each (n,).

    MATLAB's ``min((r_gam - rhatnorm).^2)`` is a nearest-neighbour search in the increasing table
    (first index on ties); an empty side (no negative or no positive value) gives NaN like MATLAB.
    """
    from scipy.special import gamma

    square = values * values
    negative, positive = values < 0, values > 0
    # einsum with the boolean masks: masked row sums without a masked copy (4-8x faster than where=)
    left_sum, right_sum = np.einsum("ij,ij->i", square, negative), np.einsum("ij,ij->i", square, positive)
    absolute = np.einsum("ij,ij->i", values, positive) - np.einsum("ij,ij->i", values, negative)
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(left_sum / np.count_nonzero(negative, axis=1))
        right = np.sqrt(right_sum / np.count_nonzero(positive, axis=1))
        gammahat = left / right
        rhat = (absolute / values.shape[1]) ** 2 / (square.sum(axis=1) / values.shape[1])
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    table = _r_gam()
    upper = np.clip(np.searchsorted(table, np.nan_to_num(rhatnorm, nan=-np.inf)), 1, table.size - 1)
    lower = upper - 1
    pick_upper = (table[upper] - rhatnorm) ** 2 < (table[lower] - rhatnorm) ** 2
    index = np.where(pick_upper, upper, lower)
    index[np.isnan(rhatnorm)] = 0  # MATLAB's min over all-NaN returns the first index
    alpha = _GAM[index]
    factor = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, left * factor, right * factor


def _block_features(normalised: np.ndarray, block: int) -> np.ndarray:
    """computefeature.m for every ``block`` x ``block`` tile of ``normalised``: (n_blocks, 18)."""
    from scipy.special import gamma

    rows, cols = normalised.shape[0] // block, normalised.shape[1] // block
    tiles = normalised[: rows * block, : cols * block].reshape(rows, block, cols, block).swapaxes(1, 2)
    tiles = tiles.reshape(rows * cols, block, block)
    features = np.empty((tiles.shape[0], _NIQE_FEATURES))
    alpha, left, right = _aggd(tiles.reshape(tiles.shape[0], -1))
    features[:, 0], features[:, 1] = alpha, (left + right) / 2
    for k, shift in enumerate(_SHIFTS):
        pair = tiles * np.roll(tiles, shift, axis=(1, 2))  # circshift inside each block
        alpha, left, right = _aggd(pair.reshape(tiles.shape[0], -1))
        mean = (right - left) * (gamma(2.0 / alpha) / gamma(1.0 / alpha))
        features[:, 2 + 4 * k : 6 + 4 * k] = np.stack([alpha, mean, left, right], axis=1)
    return features


def _normalise(image: np.ndarray, line: np.ndarray) -> np.ndarray:
    """(im - mu) / (sigma + 1) with MATLAB ``imfilter(..., 'replicate')`` moments; flat spots exactly 0."""
    from scipy.ndimage import correlate1d, maximum_filter, minimum_filter

    def smooth(x: np.ndarray) -> np.ndarray:
        return correlate1d(correlate1d(x, line, axis=0, mode="nearest"), line, axis=1, mode="nearest")

    mu = smooth(image)
    variance = np.abs(smooth(image * image) - mu * mu)
    # A flat 7x7 neighbourhood has a computed variance of ~1e-12 (rounding only); check those exactly.
    rows, cols = np.nonzero(variance < _FLAT_CANDIDATE)
    if rows.size > image.size // 20:  # mostly flat (synthetic) image: one pass of min/max filters is cheaper
        flat = maximum_filter(image, _NIQE_WINDOW, mode="nearest") == minimum_filter(image, _NIQE_WINDOW, mode="nearest")
        rows, cols = np.nonzero(flat)
    elif rows.size:
        reach = _NIQE_WINDOW // 2
        padded = np.pad(image, reach, mode="edge")
        offsets = np.arange(_NIQE_WINDOW)
        patches = padded[(rows[:, None] + offsets)[:, :, None], (cols[:, None] + offsets)[:, None, :]]
        flat = np.all(patches == image[rows, cols][:, None, None], axis=(1, 2))
        rows, cols = rows[flat], cols[flat]
    mu[rows, cols] = image[rows, cols]
    variance[rows, cols] = 0.0
    sigma = np.sqrt(variance)
    return (image - mu) / (sigma + 1.0)


def niqe_luma(image: np.ndarray) -> np.ndarray:
    """The float64 plane NIQE scores: rounded MATLAB Y of RGB, grey as it is (0..255 levels)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return rgb_to_y(image if image.dtype == np.uint8 else to_levels(image), round_y=True)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    return to_levels(image)


def niqe_min_size(block: int = NIQE_BLOCK) -> str:
    return f"{2 * block}x{block} (two {block}x{block} blocks)"


def niqe(image: np.ndarray, crop_border: int = 0, block: int = NIQE_BLOCK) -> float:
    """NIQE of one image (lower = more natural). ``image``: uint8 or [0, 1] float, (H, W) or (H, W, 3).

    Raises ``ValueError`` when fewer than two whole blocks fit (the covariance needs two); NaN when
    NIQE is undefined for the content (fewer than two blocks with a fit, e.g. a flat image).
    """
    plane = shave(niqe_luma(image), crop_border)
    rows, cols = plane.shape[0] // block, plane.shape[1] // block
    if rows * cols < 2 or block % 2:
        raise ValueError(f"image {plane.shape[1]}x{plane.shape[0]} is too small for NIQE: needs at least {niqe_min_size(block)}")
    mu_pristine, cov_pristine, line = niqe_model()
    from .resize import imresize

    plane = np.ascontiguousarray(plane[: rows * block, : cols * block])
    first = _block_features(_normalise(plane, line), block)
    half = imresize(plane, 0.5, edge="mirror")
    second = _block_features(_normalise(half, line), block // 2)
    features = np.concatenate([first, second], axis=1)
    complete = features[~np.isnan(features).any(axis=1)]  # MATLAB nancov: rows with a NaN left out
    if complete.shape[0] < 2:
        return math.nan  # e.g. a flat image: no block has structure to fit, NIQE is undefined
    with np.errstate(invalid="ignore"):
        mu = np.nanmean(features, axis=0)
        cov = np.cov(complete, rowvar=False)
    delta = mu_pristine - mu
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(delta))):
        return math.nan
    try:
        return float(np.sqrt(delta @ np.linalg.pinv((cov_pristine + cov) / 2) @ delta))
    except np.linalg.LinAlgError:  # degenerate (e.g. near-constant) statistics
        return math.nan


# ------------------------------------------------------------------------------------------ LPIPS

LPIPS_NETS: tuple[str, ...] = ("alex", "vgg")
LPIPS_WEIGHTS_ENV = "SRTOOL_LPIPS_WEIGHTS"
_TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class Backbone:
    """Which torchvision network, where its ImageNet weights live, and which ReLU outputs LPIPS taps."""

    builder: str  # torchvision.models function
    file: str  # torchvision's checkpoint file name (its hash prefix is checked on download)
    taps: tuple[int, ...]  # indices in ``features`` whose outputs are compared
    channels: tuple[int, ...]


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone("alexnet", "alexnet-owt-7be5be79.pth", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": Backbone("vgg16", "vgg16-397923af.pth", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}


def backbone_url(net: str) -> str:
    return _TORCHVISION_URL + BACKBONES[net].file


def backbone_path(net: str, weights: str | Path | None) -> Path:
    """The backbone file LPIPS-``net`` loads: ``weights``, else ``$SRTOOL_LPIPS_WEIGHTS``, else
    torchvision's hub cache (where it is downloaded to when missing)."""
    import torch

    source = weights if weights is not None else os.environ.get(LPIPS_WEIGHTS_ENV) or None
    if source is None:
        return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONES[net].file
    return Path(source).expanduser()


def _backbone_state(net: str, weights: str | Path | None) -> dict:
    """The backbone's ``features`` state dict from a file, $SRTOOL_LPIPS_WEIGHTS, or torchvision's cache."""
    path = backbone_path(net, weights)
    if weights is None and not os.environ.get(LPIPS_WEIGHTS_ENV):
        if not path.is_file():
            _download_backbone(net, path)
    else:
        if not path.is_file():
            origin = "--lpips-weights" if weights is not None else LPIPS_WEIGHTS_ENV
            raise UserError(f"{origin}: file not found: {path}")
    from .models.export import read_state_dict

    state, label = read_state_dict(path), str(path)
    return {"state": {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")},
            "label": label}


def _download_backbone(net: str, path: Path) -> None:
    """torchvision's checkpoint into the hub cache: temp file + rename, sha256 prefix of its name checked."""
    import sys

    import torch

    spec = BACKBONES[net]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        hash_prefix = spec.file.rsplit("-", 1)[1].split(".")[0]
        torch.hub.download_url_to_file(backbone_url(net), str(path), hash_prefix=hash_prefix, progress=sys.stderr.isatty())
    except Exception as exc:  # offline, proxy, hash mismatch, truncated download, read-only cache...
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise UserError(
            f"LPIPS-{net} needs torchvision's ImageNet {spec.builder} weights: none cached at {path} and the "
            f"download failed ({type(exc).__name__}{': ' + reason if reason else ''}); connect once so they are "
            f"cached, or pass --lpips-weights FILE (or set {LPIPS_WEIGHTS_ENV}) with {spec.file}"
        ) from None


def _calibration_state(net: str) -> dict:
    """The ``lpips`` package's v0.1 linear layers for ``net`` (``lin0.model.1.weight`` ...)."""
    import torch

    try:
        package = resources.files("lpips")
    except ModuleNotFoundError:
        raise UserError("LPIPS needs the 'lpips' package for its calibration weights: pip install lpips==0.1.4") from None
    with package.joinpath("weights", "v0.1", f"{net}.pth").open("rb") as handle:
        return torch.load(handle, map_location="cpu", weights_only=True)


def _build_lpips_module():
    import torch
    from torch import nn

    class LPIPSNet(nn.Module):
        """LPIPS v0.1 distance; inputs (N, 3, H, W) in [-1, 1]; returns (N,) distances."""

        def __init__(self, net: str):
            super().__init__()
            import torchvision

            spec = BACKBONES[net]
            with torch.device("meta"):  # no time spent initialising weights that are replaced at once
                network = getattr(torchvision.models, spec.builder)(weights=None)
            features = network.features.to_empty(device="cpu")
            self.features = nn.Sequential(*list(features.children())[: spec.taps[-1] + 1])
            self.taps = spec.taps
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec.channels)
            self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
            for module in self.features:
                if isinstance(module, nn.ReLU):
                    module.inplace = False  # tapped outputs must survive the next layer
            self.requires_grad_(False)
            self.eval()

        def train(self, mode: bool = True):
            return super().train(False)  # always frozen

        def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
            """The unit-normalised tapped feature maps of ``x`` (reusable for several comparisons)."""
            out, h = [], ((x - self.shift) / self.scale).contiguous(memory_format=torch.channels_last)  # ~15% faster convs
            for index, layer in enumerate(self.features):
                h = layer(h)
                if index in self.taps:
                    out.append(h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + 1e-10))
            return out

        def distance(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
            total = 0
            for lin, fa, fb in zip(self.lins, a, b):
                total = total + lin((fa - fb) ** 2).mean(dim=(2, 3), keepdim=True)
            return total.view(-1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.distance(self.embed(x), self.embed(y))

    return LPIPSNet


@dataclass
class LPIPSMetric:
    """A loaded LPIPS network and where its weights came from; call ``score(sr, hr)``."""

    net: str
    module: object
    backbone_source: str
    device: str = "cpu"
    crop_border: int = 0
    # per thread (srtool eval's image lanes share this metric): (hr array, its embedded features), the HR
    # shared by the models that are scored on it one after the other
    _cache: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    def _tensor(self, image: np.ndarray):
        import torch

        levels = shave(to_levels(image), self.crop_border)
        if levels.ndim == 2:
            levels = np.repeat(levels[..., None], 3, axis=2)
        if levels.ndim != 3 or levels.shape[2] != 3:
            raise ValueError(f"LPIPS expects (H, W) or (H, W, 3) images, got shape {image.shape}")
        x = torch.from_numpy(np.ascontiguousarray(levels.transpose(2, 0, 1), dtype=np.float32))
        return (x / 127.5 - 1.0).unsqueeze(0).to(self.device)

    def to(self, device) -> "LPIPSMetric":
        """Run the network on ``device`` (e.g. the GPU the models use)."""
        self.device = str(device)
        self.module.to(self.device)
        self.forget()  # features on the old device are never compared with new ones
        return self

    def forget(self) -> None:
        """Drop the cached HR features (every thread's): the next ``score`` embeds its HR again."""
        self._cache = threading.local()

    def score(self, sr: np.ndarray, hr: np.ndarray) -> float:
        """LPIPS distance of ``sr`` to ``hr`` (0 = identical; lower = more similar)."""
        import torch

        if sr.shape != hr.shape:
            raise ValueError(f"SR shape {sr.shape} differs from HR shape {hr.shape}")
        with torch.inference_mode():
            # the HR embedding is cached for the next model on the same image, one per thread: image lanes
            # do not replace each other's; the previous image's features go before the next are made
            reference = getattr(self._cache, "reference", None)
            if reference is None or reference[0] is not hr:
                self._cache.reference = reference = None
                reference = self._cache.reference = (hr, self.module.embed(self._tensor(hr)))
            return float(self.module.distance(self.module.embed(self._tensor(sr)), reference[1])[0])


def load_lpips(net: str = "alex", weights: str | Path | None = None, device: str = "cpu",
               crop_border: int = 0) -> LPIPSMetric:
    """LPIPS with real weights, or a :class:`UserError` that says how to get them (never random weights).

    ``weights``: a torchvision-layout state dict of the backbone (``features.N.weight`` or ``N.weight``;
    .pth or .safetensors); default ``$SRTOOL_LPIPS_WEIGHTS``, then torchvision's hub cache/download.
    """
    import torch

    if net not in LPIPS_NETS:
        raise UserError(f"unknown LPIPS network {net!r}: choose one of {', '.join(LPIPS_NETS)}")
    backbone = _backbone_state(net, weights)
    module = _build_lpips_module()(net)
    expected = module.features.state_dict()
    state = backbone["state"]
    missing = sorted(set(expected) - set(state))
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or bad:
        raise UserError(f"{backbone['label']}: not a torchvision {BACKBONES[net].builder} state dict "
                        f"(missing {missing[:3]}, wrong shapes {bad[:3]})")
    module.features.load_state_dict({k: state[k] for k in expected})
    module.features.to(memory_format=torch.channels_last)
    calibration = _calibration_state(net)
    module.lins.load_state_dict({f"{i}.weight": calibration[f"lin{i}.model.1.weight"] for i in range(len(module.lins))})
    return LPIPSMetric(net, module.to(device), backbone["label"], device, crop_border)


def lpips_available(net: str = "alex", weights: str | Path | None = None) -> tuple[bool, str]:
    """(True, source) when LPIPS can be loaded; (False, the reason) otherwise. Loads nothing twice."""
    try:
        metric = load_lpips(net, weights)
    except UserError as exc:
        return False, str(exc)
    return True, metric.backbone_source


def lpips_distance(sr: np.ndarray, hr: np.ndarray, net: str = "alex", weights: str | Path | None = None) -> float:
    """One-off LPIPS (loads the network each call; keep a :func:`load_lpips` result for many images)."""
    return load_lpips(net, weights).score(sr, hr)


__all__ = ["niqe", "niqe_luma", "load_lpips", "LPIPSMetric", "lpips_distance", "LPIPS_NETS", "BACKBONES",
           "LPIPS_WEIGHTS_ENV"]
