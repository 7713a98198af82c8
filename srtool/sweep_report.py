"""``srtool sweep report``: one table, one curves figure and one comparison figure for a sweep.

The table is the study's shape: one row per grid point (seeds folded together), the grid values as
columns, then each metric per dataset as ``mean ± std`` over the seeds (sample standard deviation;
a single seed shows its value alone). Scores come from :func:`srtool.evaluate.evaluate` -- the code
of ``srtool eval``, same protocol and engine -- run on each point's ``exports/best.safetensors``
(``last`` when the point never validated). Metric names are passed through (``metrics``), so a metric
that :class:`~srtool.evaluate.DatasetResult` gains later becomes a column without changes here.

Files (``SWEEP_DIR/``): ``report.json`` (schema ``srtool-sweep-report/1``), ``report.csv``,
``report.md``, ``eval.json`` (every per-image score, schema ``srtool-eval/1``), ``curves.png`` (each
point's training curves overlaid, small multiples) and ``comparison.png`` (the same crop of one image
from each point, labelled with that image's scores) and ``report-cache.json`` (the scores and the
figures' inputs, :mod:`srtool.sweep_cache`: a report scores only what changed since the last one).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scoring import DEFAULT_METRICS

from .atomic import write_text_atomic
from .errors import UserError
from .sweep import read_manifest

REPORT_SCHEMA = "srtool-sweep-report/1"
SEED_KEY = "train.seed"


@dataclass
class Cell:
    """One metric of one row on one dataset: the per-seed values, their mean and std."""

    values: list[float]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, metric: str) -> str:
        if not self.values:
            return "-"
        digits = 2 if metric == "psnr" else 4
        text = f"{self.mean:.{digits}f}"
        return text + (f" ± {self.std:.{digits}f}" if self.std is not None else "")


@dataclass
class Row:
    """The points that share every grid value but the seed."""

    values: dict[str, str]
    points: list[str] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    scored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (dataset, metric)


@dataclass
class SweepReport:
    sweep_dir: Path
    axes: list[str]
    datasets: list[str]
    metrics: list[str]
    protocol: str
    rows: list[Row]
    eval_report: Any = None  # srtool.evaluate.EvalReport
    figure: tuple[str, str, tuple[int, int, int, int]] | None = None
    files: list[Path] = field(default_factory=list)  # written by this report
    kept: list[Path] = field(default_factory=list)  # figures whose inputs did not change (not drawn again)
    rescored: list[str] = field(default_factory=list)  # points scored by this report (on some dataset at least)
    cached: list[str] = field(default_factory=list)  # points whose every score came from the cache
    cache_problem: str | None = None  # why an existing report-cache.json was ignored


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _display(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def grid_axes(points: list[dict[str, Any]]) -> list[str]:
    """Every grid key used by any point, in first-seen order, the seed last."""
    keys: list[str] = []
    for point in points:
        for key in point["values"]:
            if key not in keys:
                keys.append(key)
    return [k for k in keys if k != SEED_KEY] + ([SEED_KEY] if SEED_KEY in keys else [])


def point_export(run_dir: Path) -> Path | None:
    for name in ("best", "last"):
        path = run_dir / "exports" / f"{name}.safetensors"
        if path.is_file():
            return path
    return None


def _status_note(point: dict[str, Any]) -> str | None:
    status = point.get("status")
    if status == "done":
        return None
    if status == "stopped":
        return f"{point['name']}: stopped ({point.get('reason')})"
    if status == "failed":
        return f"{point['name']}: FAILED ({point.get('reason')})"
    return f"{point['name']}: {status} at iteration {point.get('iteration', 0)}/{point.get('total')} (not scored)"


def build_rows(points: list[dict[str, Any]], axes: list[str]) -> list[Row]:
    columns = [k for k in axes if k != SEED_KEY]
    rows: dict[tuple[str, ...], Row] = {}
    for point in points:
        values = {k: _display(_lookup(point["config"], k)) for k in columns}
        row = rows.setdefault(tuple(values.values()), Row(values))
        row.points.append(point["name"])
        row.seeds.append(_display(_lookup(point["config"], SEED_KEY)))
        note = _status_note(point)
        if note:
            row.notes.append(note)
    return list(rows.values())


def evaluate_sweep(
    sweep_dir: str | Path,
    evals: list[str] | None = None,
    protocol: str = "y",
    device: str = "auto",
    tile: int | None = None,
    metrics: str | tuple[str, ...] | list[str] = DEFAULT_METRICS,
    figure_image: str | None = None,
    progress: bool = True,
    lpips_net: str = "alex",
    lpips_weights: str | Path | None = None,
    cache: bool = True,
) -> SweepReport:
    """Score every finished point's export on ``evals`` (default: the sweep's ``--eval`` sets), fold the
    seeds, and write the table (JSON/CSV/Markdown), ``eval.json``, ``curves.png`` and ``comparison.png``.

    Scores and figures whose inputs did not change since the last report come from
    ``SWEEP_DIR/report-cache.json`` (:mod:`srtool.sweep_cache`); ``cache=False`` scores and draws
    everything again (and rewrites the cache)."""
    from . import __version__
    from .devices import resolve_device
    from .evaluate import _now, _unique_dataset_names, open_dataset
    from .eval_results import EvalReport, ModelEntry
    from .report import write_json
    from .scoring import parse_metrics
    from .sweep_cache import ReportCache, dataset_identity, digest, export_key, scoring_context

    metrics = parse_metrics(metrics)
    sweep_dir = Path(sweep_dir).expanduser()
    doc = read_manifest(sweep_dir)
    points = doc["points"]
    axes = grid_axes(points)
    rows = build_rows(points, axes)
    report = SweepReport(sweep_dir, axes, [], list(metrics), protocol, rows)
    store = ReportCache(sweep_dir, use=cache)
    report.cache_problem = store.problem
    _curves(report, points, store)
    datasets = list(evals or doc.get("eval") or [])
    if not datasets:
        raise UserError(f"{sweep_dir}: no evaluation set recorded; give --eval NAME|DIR (e.g. --eval Set5)")
    scored = [(p, point_export(sweep_dir / p["name"])) for p in points if p.get("status") in ("done", "stopped")]
    scored = [(p, path) for p, path in scored if path is not None]
    if not scored:
        raise UserError(f"{sweep_dir}: no point has finished yet; nothing to evaluate")
    models = _Models(scored, device, tile)
    identities = {p["name"]: store.sha256(path) for p, path in scored}
    scale = models.scale()
    opened = [open_dataset(d, scale) for d in datasets]
    _unique_dataset_names(opened)
    device_type = resolve_device(device).type
    context = scoring_context(protocol, metrics, device_type, tile, lpips_net, lpips_weights)
    names = [p["name"] for p, _ in scored]
    exports = {export_key(path) for _, path in scored}
    results, metric_sources, scorer = {}, {}, None
    for dataset in opened:
        files = dataset_identity(dataset)  # every image file's path, size and mtime: stat once per set
        keys = {name: digest({"model": identities[name], "dataset": files, "context": context}) for name in names}
        for name in names:
            results[(dataset.name, name)] = store.results(keys[name], dataset, name, identities[name], protocol)
            metric_sources = metric_sources or store.metric_sources(keys[name])
        missing = [name for name in names if results[(dataset.name, name)] is None]
        if not missing:
            continue
        if scorer is None:
            from .scoring import Scorer

            scorer = Scorer(metrics, scale, protocol, lpips_net, lpips_weights, "cuda" if device_type == "cuda" else "cpu")
            metric_sources = scorer.describe()
        for result in _score(models.get(missing), missing, dataset, protocol, progress, scorer):
            results[(dataset.name, result.model)] = result
            store.store(keys[result.model], result, metric_sources)
        store.save(set(identities.values()), exports)  # each set's scores kept as soon as they are known
        report.rescored.extend(n for n in missing if n not in report.rescored)
    report.cached = [n for n in names if n not in report.rescored]
    entries = [ModelEntry(name, name, identities[name], str(path), scale) for name, (_, path) in zip(names, scored)]
    eval_report = EvalReport(protocol, scale, entries, [results[(d.name, n)] for d in opened for n in names],
                             __version__, _now(), metrics=metrics, metric_sources=metric_sources)
    report.eval_report = eval_report
    report.datasets = eval_report.dataset_names
    by_name = {row_point: row for row in rows for row_point in row.points}
    for point, _ in scored:
        row = by_name[point["name"]]
        row.scored.append(point["name"])
        for dataset in report.datasets:
            result = eval_report.cell(point["name"], dataset)
            for metric in report.metrics:
                value = getattr(result, metric, None) if result is not None and result.complete else None
                cell = row.cells.setdefault((dataset, metric), Cell([]))
                if value is not None and not math.isnan(value):
                    cell.values.append(float(value))
                elif result is not None and not result.complete:
                    row.notes.append(f"{point['name']}: failed on some {dataset} images (not scored there)")
    write_json(eval_report, sweep_dir / "eval.json")
    report.files.append(sweep_dir / "eval.json")
    report.figure = _comparison(report, models, scored, opened, figure_image, store, identities, context)
    for suffix, writer in ((".json", to_json), (".csv", to_csv), (".md", to_markdown)):
        path = sweep_dir / f"report{suffix}"
        write_text_atomic(path, writer(report))
        report.files.append(path)
    store.save(set(identities.values()), exports)
    report.cache_problem = store.problem
    return report


def _score(models: list, names: list[str], dataset, protocol: str, progress: bool, scorer) -> list:
    """``models`` (named ``names``) scored on ``dataset``, as srtool eval scores them."""
    from .evaluate import evaluate_models

    return evaluate_models(models, dataset, protocol, progress, labels=names, scorer=scorer)


class _Models:
    """The points' networks, each loaded the first time something needs it (an unchanged report loads none)."""

    def __init__(self, scored: list, device: str, tile: int | None):
        self.paths = {p["name"]: path for p, path in scored}
        self.device, self.tile = device, tile
        self.loaded: dict[str, Any] = {}

    def get(self, names: list[str]) -> list:
        from .evaluate import load_models

        wanted = [n for n in names if n not in self.loaded]
        for name, model in zip(wanted, load_models([self.paths[n] for n in wanted], self.device, self.tile) if wanted else []):
            model.name = name  # table rows and figure panels are named after the points
            self.loaded[name] = model
        return [self.loaded[n] for n in names]

    def scale(self) -> int:
        """The points' common scale, from the exports' headers (all loaded when they disagree or do not tell:
        loading words the refusal)."""
        from .model_files import scale_without_loading

        scales = {scale_without_loading(path) for path in self.paths.values()}
        if len(scales) == 1 and None not in scales:
            return scales.pop()
        return self.get(list(self.paths))[0].scale


# ---------------------------------------------------------------------------------------- figures


def _comparison(report: SweepReport, models: _Models, scored: list, opened: list, figure_image: str | None,
                store, identities: dict[str, str], context: dict[str, Any]):
    """``comparison.png``: one panel per row (its first scored seed), HR and bicubic first; kept as it is
    when the cache says it shows these models on this image of this dataset."""
    from .evaluate import choose_figure_image
    from .figure import comparison_figure, save_figure
    from .sweep_cache import dataset_identity, digest

    firsts = {row.scored[0] for row in report.rows if row.scored}
    chosen = [p["name"] for p, _ in scored if p["name"] in firsts]
    dataset_name, image_name = choose_figure_image(report.eval_report, figure_image)
    dataset = next(d for d in opened if d.name == dataset_name)
    pair = next(p for p in dataset.pairs if p.name == image_name)
    title = f"{dataset_name}/{image_name}, x{report.eval_report.scale}, protocol {report.protocol}"
    path = report.sweep_dir / "comparison.png"
    key = digest({"figure": 1, "title": title, "image": image_name, "dataset": dataset_identity(dataset),
                  "panels": [[name, identities[name]] for name in chosen], "context": context})
    kept = store.output(path.name, key)
    region = kept.get("region") if kept is not None else None
    if isinstance(region, list) and len(region) == 4 and all(type(v) is int for v in region):
        report.kept.append(path)
        return dataset_name, image_name, tuple(region)
    hr, lr = dataset.load(pair)
    figure, layout = comparison_figure(hr, lr, models.get(chosen), chosen, report.eval_report.scale, report.protocol,
                                       None, title)
    save_figure(figure, path)
    store.record_output(path.name, key, region=[int(v) for v in layout.region])
    report.files.append(path)
    return dataset_name, image_name, layout.region


def _curves(report: SweepReport, points: list[dict[str, Any]], store) -> None:
    """``curves.png`` drawn, or kept when the cache says it was drawn from these points' logs as they are now."""
    from .sweep_cache import code_revision, digest, file_state

    sweep_dir = report.sweep_dir
    key = digest({"curves": code_revision(), "logs": [[p["name"], file_state(sweep_dir / p["name"] / "log.jsonl")]
                                                   for p in points]})
    if store.output("curves.png", key) is not None:
        report.kept.append(sweep_dir / "curves.png")
        return
    report.files.append(plot_sweep_curves(sweep_dir, points))
    store.record_output("curves.png", key)


def plot_sweep_curves(sweep_dir: Path, points: list[dict[str, Any]]) -> Path:
    """``curves.png``: small multiples (each generator loss term, each discriminator term, validation
    PSNR per dataset), every point overlaid in its own colour, one legend of the point names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_path
    from .train.monitor import read_log

    logs = {p["name"]: read_log(sweep_dir / p["name"] / "log.jsonl") for p in points}
    train_keys: list[str] = []
    val_keys: list[str] = []
    for records in logs.values():
        for r in records:
            keys = train_keys if r.get("kind") == "train" else val_keys if r.get("kind") == "val" else []
            for k in r:
                if (k.startswith("loss/") or k.endswith("/psnr")) and k not in keys:
                    keys.append(k)
    g_keys = [k for k in train_keys if not k.startswith("loss/d_")]
    panels = g_keys + [k for k in train_keys if k.startswith("loss/d_")] + [k for k in val_keys if k.endswith("/psnr")]
    if not panels:
        panels = ["loss/pixel"]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols + 2.6, 3.4 * nrows), squeeze=False, constrained_layout=True)
    colours = plt.get_cmap("tab10" if len(logs) <= 10 else "tab20")
    handles = {}
    for ax, key in zip(axes.flat, panels):
        val = key.endswith("/psnr")
        ax.set_title(f"validation PSNR (dB), {key.rsplit('/', 1)[0]}" if val else
                     ("discriminator " if key.startswith("loss/d_") else "generator ") + key.removeprefix("loss/") + " loss")
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        positive = True
        for i, (name, records) in enumerate(logs.items()):
            kind = "val" if val else "train"
            pts = [(r["iter"], r[key]) for r in records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
            if pts:
                (line,) = ax.plot(*zip(*pts), color=colours(i % colours.N), linewidth=1.2,
                                  marker="o" if val else None, markersize=3, label=name)
                handles.setdefault(name, line)
                positive = positive and all(v > 0 for _, v in pts)
        if not val and positive and ax.lines:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8, title="points")
    fig.suptitle(f"sweep {sweep_dir.name}: training curves", fontsize=12)
    path = sweep_dir / "curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ tables


def _short(key: str, axes: list[str]) -> str:
    last = [k.rsplit(".", 1)[-1] for k in axes]
    tail = key.rsplit(".", 1)[-1]
    return tail if last.count(tail) == 1 else key


def header(report: SweepReport) -> list[str]:
    cols = [_short(k, report.axes) for k in report.axes if k != SEED_KEY] + ["seeds"]
    return cols + [f"{d} {m.upper()}" for d in report.datasets for m in report.metrics]


def table_rows(report: SweepReport) -> list[list[str]]:
    out = []
    for row in report.rows:
        cells = [row.values[k] for k in report.axes if k != SEED_KEY]
        seeds = f"{len(row.scored)}/{len(row.points)}" if len(row.scored) != len(row.points) else str(len(row.points))
        cells.append(seeds + (" *" if row.notes else ""))
        for d in report.datasets:
            for m in report.metrics:
                cells.append(row.cells.get((d, m), Cell([])).text(m))
        out.append(cells)
    return out


def notes(report: SweepReport) -> list[str]:
    return [n for row in report.rows for n in row.notes]


def title(report: SweepReport) -> str:
    scale = report.eval_report.scale if report.eval_report is not None else "?"
    return (f"sweep {report.sweep_dir.name}: {' / '.join(m.upper() for m in report.metrics)}, x{scale}, "
            f"protocol {report.protocol}, mean ± std over seeds")


def rich_table(report: SweepReport):
    from rich.table import Table

    table = Table(title=title(report), title_justify="left")
    for i, name in enumerate(header(report)):
        table.add_column(name.replace(" ", "\n", 1) if i > len(report.axes) - 1 else name,
                         justify="left" if i < len(report.axes) else "right")
    for cells in table_rows(report):
        table.add_row(*cells)
    return table


def print_sweep_report(report: SweepReport, console) -> None:
    from rich.markup import escape

    console.print(rich_table(report))
    for note in notes(report):
        console.print(f"[yellow]* {escape(note)}[/yellow]", highlight=False, soft_wrap=True)


def cache_summary(report: SweepReport) -> list[str]:
    """What the report took from ``report-cache.json`` and what it scored or drew again (stderr lines)."""
    from .sweep_cache import CACHE_NAME

    lines = [report.cache_problem] if report.cache_problem else []
    lines.append(f"scored {len(report.rescored)} point(s), {len(report.cached)} from {report.sweep_dir / CACHE_NAME}")
    if report.kept:
        lines.append(f"unchanged, not drawn again: {', '.join(p.name for p in report.kept)}")
    return lines


def to_markdown(report: SweepReport) -> str:
    head = header(report)
    lines = [f"# {title(report)}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * (len(report.axes)) + ["---:"] * (len(head) - len(report.axes))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in table_rows(report)]
    if notes(report):
        lines += [""] + [f"\\* {n}" for n in notes(report)]
    lines += ["", "Points:", ""]
    for row in report.rows:
        lines.append(f"- {', '.join(f'`{p}`' for p in row.points)}")
    return "\n".join(lines) + "\n"


def to_csv(report: SweepReport) -> str:
    """One row per point and dataset (seeds unfolded) with the point's grid values and scores, then
    one ``(mean)`` row per grid row with the mean and std over its seeds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [k for k in report.axes if k != SEED_KEY]
    stats = [f"{m}{s}" for m in report.metrics for s in ("", "_std")]
    writer.writerow(["point", *columns, "seed", "dataset", *stats, "n", "notes"])
    for row in report.rows:
        for point, seed in zip(row.points, row.seeds):
            for d in report.datasets:
                scores = []
                for m in report.metrics:
                    result = report.eval_report.cell(point, d) if point in row.scored else None
                    value = getattr(result, m, None) if result is not None else None
                    scores += ["" if value is None else repr(float(value)), ""]
                writer.writerow([point, *(row.values[k] for k in columns), seed, d, *scores, 1 if point in row.scored else 0, ""])
        for d in report.datasets:
            scores = []
            for m in report.metrics:
                cell = row.cells.get((d, m), Cell([]))
                scores += ["" if cell.mean is None else repr(cell.mean), "" if cell.std is None else repr(cell.std)]
            writer.writerow(["(mean)", *(row.values[k] for k in columns), ",".join(row.seeds), d, *scores,
                             len(row.cells.get((d, report.metrics[0]), Cell([])).values), " / ".join(row.notes)])
    return buffer.getvalue()


def to_json(report: SweepReport) -> str:
    """``{"schema": "srtool-sweep-report/1", "sweep_dir", "protocol", "scale", "axes", "datasets",
    "metrics", "rows": [{"values": {key: value}, "points", "seeds", "scored", "notes",
    "scores": {dataset: {metric: {"mean", "std", "values"}}}}], "figure"}``"""
    doc = {
        "schema": REPORT_SCHEMA, "sweep_dir": str(report.sweep_dir), "protocol": report.protocol,
        "scale": report.eval_report.scale if report.eval_report is not None else None,
        "axes": report.axes, "datasets": report.datasets, "metrics": report.metrics,
        "rows": [
            {"values": row.values, "points": row.points, "seeds": row.seeds, "scored": row.scored, "notes": row.notes,
             "scores": {d: {m: {"mean": c.mean, "std": c.std, "values": c.values}
                            for m in report.metrics if (c := row.cells.get((d, m))) is not None}
                        for d in report.datasets}}
            for row in report.rows
        ],
        "figure": ({"dataset": report.figure[0], "image": report.figure[1], "region": list(report.figure[2])}
                   if report.figure else None),
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"
