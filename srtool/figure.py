"""Comparison figures: crops of HR / bicubic / each model side by side, labelled with PSNR/SSIM.

Layout (one row, left to right): the whole HR image scaled to the row height with the region
outlined in red, then one panel per image -- HR, bicubic, each model -- showing the region enlarged
by an integer factor with nearest-neighbour (every source pixel becomes a ``zoom`` x ``zoom`` block,
so what you see is exactly what was scored). Under each panel: its name, then that image's PSNR/SSIM.

Automatic region (when none is given): the square window of side ``region_side(h, w)`` (a quarter of
the shorter side, clamped to 32..160 px) that maximises the summed per-pixel *disagreement* of the
outputs: the variance across the SR panels (bicubic and the models) of their luma. If the outputs
are all identical (e.g. only bicubic was evaluated), disagreement is the squared luma error against
HR instead. Windows stay ``border`` px (the metric's crop, = scale) away from the edges; ties go to
the top-most, then left-most window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MARGIN = 10
LABEL_GAP = 4
TITLE_SIZE = 18
LABEL_SIZE = 15
TARGET_PANEL = 256  # display size a crop is zoomed towards (integer factor)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
REGION_COLOUR = (255, 0, 0)


@dataclass
class Panel:
    """One crop in the figure: its label lines and the full-size image the crop comes from."""

    label: str
    image: np.ndarray  # uint8 (H, W) or (H, W, 3), same size as HR
    scores: tuple[float, float] | dict[str, float] | None = None  # (PSNR, SSIM) or {metric: value}; None for HR

    @property
    def lines(self) -> list[str]:
        if self.scores is None:
            return [self.label, "reference"]
        if not isinstance(self.scores, dict):
            return [self.label, f"{self.scores[0]:.2f} dB / {self.scores[1]:.4f}"]
        from .scoring import score_lines

        return [self.label, *score_lines(self.scores, arrows=False)]


@dataclass
class FigureLayout:
    """Where everything landed: boxes are (x, y, w, h) in figure pixels; region in HR pixels."""

    size: tuple[int, int]
    region: tuple[int, int, int, int]
    zoom: int
    overview_box: tuple[int, int, int, int]
    panel_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    label_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    title: str = ""


def font(size: int):
    """PIL's bundled scalable font (needs Pillow >= 10.1 with FreeType); bitmap fallback otherwise."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - old Pillow / no FreeType
        return ImageFont.load_default()


def luma(image: np.ndarray) -> np.ndarray:
    """Unrounded BT.601 luma (float64) used to compare panels; gray images as they are."""
    if image.ndim == 2:
        return image.astype(np.float64)
    from .metrics import rgb_to_y

    return rgb_to_y(image, round_y=False)


def region_side(height: int, width: int) -> int:
    return int(min(max(min(height, width) // 4, 32), 160, height, width))


def pick_region(
    hr: np.ndarray, outputs: list[np.ndarray], side: int | None = None, border: int = 0
) -> tuple[int, int, int, int]:
    """The square window where the outputs disagree most (module docstring has the rule): (x, y, w, h)."""
    height, width = hr.shape[:2]
    side = side or region_side(height, width)
    lumas = np.stack([luma(o) for o in outputs]) if outputs else np.empty((0, height, width))
    disagreement = lumas.var(axis=0) if len(outputs) > 1 else np.zeros((height, width))
    if not disagreement.any():
        reference = luma(hr)
        disagreement = np.mean((lumas - reference) ** 2, axis=0) if len(outputs) else np.zeros((height, width))
    # Allowed top-left corners keep the window inside the scored area when the image is big enough.
    b = border if height - 2 * border >= side and width - 2 * border >= side else 0
    inner = disagreement[b : height - b, b : width - b]
    integral = np.zeros((inner.shape[0] + 1, inner.shape[1] + 1))
    integral[1:, 1:] = inner.cumsum(0).cumsum(1)
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)  # argmax: first (top-most, left-most) maximum
    return int(x) + b, int(y) + b, side, side


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def text_block(lines: list[str], width: int, size: int = LABEL_SIZE):
    """The label under a panel, as its own image (tests compare the figure's pixels against it)."""
    from PIL import Image, ImageDraw

    fnt = font(size)
    line_height = size + 4
    block = Image.new("RGB", (width, line_height * len(lines)), BACKGROUND)
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        text = line
        while text and draw.textlength(text, font=fnt) > width:  # never spill into the next panel
            text = text[:-2] + "…" if len(text) > 2 else ""
        offset = (width - draw.textlength(text, font=fnt)) / 2
        draw.text((offset, i * line_height), text, font=fnt, fill=TEXT_COLOUR)
    return block


def render_comparison(
    hr: np.ndarray, panels: list[Panel], region: tuple[int, int, int, int], title: str = ""
):
    """Build the figure; returns (PIL image, :class:`FigureLayout`)."""
    from PIL import Image, ImageDraw

    x, y, w, h = region
    height, width = hr.shape[:2]
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"region {x},{y},{w},{h} is not inside the {width}x{height} image")
    zoom = max(1, TARGET_PANEL // max(w, h))
    panel_w, panel_h = w * zoom, h * zoom
    overview_h = panel_h
    overview_w = max(1, round(width * overview_h / height))
    label_h = text_block(["x"] * max([2, *(len(p.lines) for p in panels)]), 10).height
    title_h = (TITLE_SIZE + 8) if title else 0
    fig_w = MARGIN + overview_w + len(panels) * (MARGIN + panel_w) + MARGIN
    fig_h = MARGIN + title_h + panel_h + LABEL_GAP + label_h + MARGIN
    figure = Image.new("RGB", (fig_w, fig_h), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    if title:
        draw.text((MARGIN, MARGIN), title, font=font(TITLE_SIZE), fill=TEXT_COLOUR)
    top = MARGIN + title_h
    overview = Image.fromarray(_rgb(hr)).resize((overview_w, overview_h), Image.Resampling.LANCZOS)
    figure.paste(overview, (MARGIN, top))
    sx, sy = overview_w / width, overview_h / height
    x0, y0 = MARGIN + x * sx, top + y * sy
    # a thin region (288x9) is under one overview pixel across: its box is still drawn, at least one pixel
    draw.rectangle((x0, y0, max(x0, MARGIN + (x + w) * sx - 1), max(y0, top + (y + h) * sy - 1)),
                   outline=REGION_COLOUR, width=2)
    layout = FigureLayout((fig_w, fig_h), region, zoom, (MARGIN, top, overview_w, overview_h), title=title)
    left = MARGIN + overview_w + MARGIN
    for panel in panels:
        crop = _rgb(panel.image[y : y + h, x : x + w])
        enlarged = np.repeat(np.repeat(crop, zoom, axis=0), zoom, axis=1)
        figure.paste(Image.fromarray(np.ascontiguousarray(enlarged)), (left, top))
        block = text_block(panel.lines, panel_w)
        figure.paste(block, (left, top + panel_h + LABEL_GAP))
        layout.panel_boxes.append((left, top, panel_w, panel_h))
        layout.label_boxes.append((left, top + panel_h + LABEL_GAP, block.width, block.height))
        layout.labels.append(panel.lines)
        left += panel_w + MARGIN
    return figure, layout


def save_figure(figure, path: str | Path, replace: bool = True) -> None:
    """Write the figure as PNG, atomically (``replace=False``: see :func:`srtool.atomic.atomic_path`)."""
    from .atomic import atomic_path

    with atomic_path(path, replace=replace) as tmp:
        figure.save(tmp, format="PNG")


def comparison_figure(
    hr: np.ndarray,
    lr: np.ndarray,
    models: list,
    labels: list[str],
    scale: int,
    protocol: str = "y",
    region: tuple[int, int, int, int] | None = None,
    title: str = "",
    scorer=None,
):
    """Run bicubic and every model on one image and lay out their crops: returns (image, layout).

    Scores under each panel are that image's PSNR/SSIM under ``protocol`` (the same numbers the
    eval tables hold), or the metrics of ``scorer`` (a :class:`srtool.scoring.Scorer`, as ``eval
    --metric`` chose them). A model that fails on this image raises its exception (the caller names it).
    """
    from .loading import bicubic_model
    from .metrics import compute_metrics

    panels = [Panel("HR", hr)]
    runs: list[tuple[str, object]] = []
    if not any(getattr(m, "is_bicubic", False) for m in models):
        runs.append(("bicubic", bicubic_model(scale)))
    runs.extend(zip(labels, models))
    for label, model in runs:
        sr = model(lr)
        scores = scorer.score(sr, hr) if scorer is not None else compute_metrics(sr, hr, scale, protocol)
        panels.append(Panel(label, sr, scores))
    if region is None:
        region = pick_region(hr, [p.image for p in panels[1:]], border=scale)
    return render_comparison(hr, panels, region, title)
