"""Writers for ``srtool eval`` results: console table, JSON, CSV and Markdown.

Every output states the protocol next to the numbers, the srtool version, and each model's identity
(sha256 of its weights file, or ``bicubic``), so a number can always be traced back to how and with
what it was computed. The JSON schema (``"schema": "srtool-eval/2"``) is documented in the README
section of ``srtool eval`` and in :func:`to_json_document`.

Columns follow the metrics the run computed (``--metric``; the default PSNR/SSIM output is unchanged).
With LPIPS or NIQE, headings carry arrows (↑ higher is better, ↓ lower is better) and a line under the
table says so in words.

A dataset mean over fewer images than the dataset has (a model failed on some) is flagged
everywhere: ``complete: false`` in JSON, a ``*`` and a footnote in the table and Markdown.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from .atomic import write_text_atomic
from .eval_results import AS_IS, DatasetResult, EvalReport
from .metrics import PROTOCOL_DESCRIPTIONS
from .scoring import DEFAULT_METRICS, METRICS, direction_note

SCHEMA = "srtool-eval/2"  # /2: "metrics", "metric_info", "metric_sources"; a key per chosen metric


def _number(value: float | None) -> float | str | None:
    """JSON has no infinity: a perfect reconstruction's PSNR is written as the string "inf"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def format_cells(result: DatasetResult | None, metrics: tuple[str, ...] = DEFAULT_METRICS) -> list[str]:
    """['28.42', '0.8101'] for a table; a '*' marks a mean over an incomplete set, 'failed' no result."""
    if result is None:
        return ["-"] * len(metrics)
    if not result.succeeded:
        return ["failed"] * len(metrics)
    mark = "" if result.complete else "*"
    return [f"{result.mean(m):.{METRICS[m].digits}f}{mark}" for m in metrics]


def format_cell(result: DatasetResult | None) -> tuple[str, str]:
    """('28.42', '0.8101'): the PSNR and SSIM cells."""
    psnr_cell, ssim_cell = format_cells(result, DEFAULT_METRICS)
    return psnr_cell, ssim_cell


def _heading(report: EvalReport, metric: str) -> str:
    """'PSNR' for the default table (unchanged), 'PSNR ↑' / 'LPIPS ↓' once perceptual metrics are in."""
    info = METRICS[metric]
    return info.label if report.metrics == DEFAULT_METRICS else f"{info.label} {info.arrow}"


def failure_notes(report: EvalReport) -> list[str]:
    notes = []
    for r in report.results:
        for image in r.failed:
            notes.append(f"{r.model} failed on {r.name}/{image.name}: {image.error}")
    return notes


def _as_is(report: EvalReport) -> bool:
    return all(m.identity == AS_IS for m in report.models)


def title(report: EvalReport) -> str:
    if report.metrics == DEFAULT_METRICS:
        return f"PSNR (dB) / SSIM, x{report.scale}, protocol {report.protocol}"
    names = " / ".join(METRICS[m].heading() for m in report.metrics)
    if _as_is(report):
        return f"{names}, images scored as they are (no model, no HR)"
    return f"{names}, x{report.scale}, protocol {report.protocol}"


def metric_notes(report: EvalReport) -> list[str]:
    """The direction of each metric in words and where LPIPS's weights came from (empty for the default)."""
    if report.metrics == DEFAULT_METRICS:
        return []
    notes = [direction_note(report.metrics)]
    if "lpips" in report.metrics and report.metric_sources:
        notes.append(f"LPIPS v0.1 ({report.metric_sources.get('lpips_net')}), backbone weights "
                     f"{report.metric_sources.get('lpips_backbone')}")
    if "niqe" in report.metrics:
        notes.append("NIQE: Y channel (MATLAB rgb2ycbcr, rounded), 96x96 blocks, no border crop, official pristine model")
    return notes


def rich_table(report: EvalReport):
    """The study's table shape: rows = models, a PSNR and an SSIM column per dataset. Names are text, not
    markup (a label ``net[v2]`` showed as ``net``; ``[/]`` ended the run in a MarkupError)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title(report)), title_justify="left")
    table.add_column("model", style="bold")
    for name in report.dataset_names:
        for metric in report.metrics:
            table.add_column(f"{escape(name)}\n{_heading(report, metric)}", justify="right")
    for model in report.models:
        row = [escape(model.label)]
        for name in report.dataset_names:
            row.extend(format_cells(report.cell(model.label, name), report.metrics))
        table.add_row(*row)
    return table


def print_report(report: EvalReport, console) -> None:
    """The table, then the protocol in words and any failures (one line each), on ``console``."""
    from rich.markup import escape
    from rich.measure import Measurement

    table = rich_table(report)
    # never narrower than the table: squeezed into 80 columns (a log, a pipe) its names and numbers were
    # cut to "Set5_…" and "0.81…"; a wider table is written whole (a terminal wraps its lines)
    natural = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(table, crop=False)
    finally:
        console.width = width
    if not _as_is(report) and (report.metrics == DEFAULT_METRICS or {"psnr", "ssim"} & set(report.metrics)):
        console.print(f"protocol {report.protocol}: {PROTOCOL_DESCRIPTIONS[report.protocol]}", highlight=False)
    for note in metric_notes(report):
        console.print(escape(note), highlight=False)
    notes = failure_notes(report)
    if notes:
        console.print("* mean over the images that succeeded only (not comparable with published tables)", highlight=False)
        for note in notes:
            console.print(f"[red]{escape(note)}[/red]", highlight=False, soft_wrap=True)


def to_json_document(report: EvalReport) -> dict[str, Any]:
    """The JSON document (schema ``srtool-eval/2``)::

        {"schema": "srtool-eval/2", "srtool_version": str, "created": ISO-8601 UTC,
         "protocol": "y" | "rgb" | "y-float", "protocol_description": str, "scale": int,
         "metrics": ["psnr", "ssim", ...],                      (new in /2: the chosen metrics, in order)
         "metric_info": {name: {"label", "unit", "better": "higher" | "lower", "reference": bool}},  (/2)
         "metric_sources": {"lpips_net", "lpips_backbone"} or {},                                (/2)
         "models": [{"label", "name", "identity" (sha256 hex, "bicubic" or "as-is"), "source", "scale"}],
         "results": [{"model": label, "model_identity", "dataset", "dataset_path", "lr_source",
                      "n_images", "n_failed", "complete": bool,
                      <metric>: mean | null, ...   (one key per chosen metric; over the images that succeeded)
                      "images": [{"name", <metric>: float | "inf" | null, ...,
                                  "seconds": float, "error": str | null}]}]}

    /1 -> /2: the three new top-level keys; metric keys appear only for the chosen metrics (the
    default psnr/ssim document is /1's plus the new keys).
    """
    metrics = report.metrics
    return {
        "schema": SCHEMA,
        "srtool_version": report.srtool_version,
        "created": report.created,
        "protocol": report.protocol,
        "protocol_description": PROTOCOL_DESCRIPTIONS[report.protocol],
        "scale": report.scale,
        "metrics": list(metrics),
        "metric_info": {m: {"label": METRICS[m].label, "unit": METRICS[m].unit, "better": METRICS[m].direction,
                            "reference": METRICS[m].needs_reference} for m in metrics},
        "metric_sources": dict(report.metric_sources),
        "models": [
            {"label": m.label, "name": m.name, "identity": m.identity, "source": m.source, "scale": m.scale}
            for m in report.models
        ],
        "results": [
            {
                "model": r.model,
                "model_identity": r.model_identity,
                "dataset": r.name,
                "dataset_path": r.path,
                "lr_source": r.lr_source,
                "n_images": len(r.images),
                "n_failed": len(r.failed),
                "complete": r.complete,
                **{m: _number(r.mean(m)) for m in metrics},
                "images": [
                    {"name": i.name, **{m: _number(getattr(i, m)) for m in metrics},
                     "seconds": round(i.seconds, 4), "error": i.error}
                    for i in r.images
                ],
            }
            for r in report.results
        ],
    }


CSV_COLUMNS = ("model", "model_identity", "dataset", "image", "psnr", "ssim", "status", "error",
               "protocol", "scale", "srtool_version")  # with the default metrics; else one column per metric


def csv_columns(metrics: tuple[str, ...]) -> tuple[str, ...]:
    return ("model", "model_identity", "dataset", "image", *metrics, "status", "error", "protocol", "scale",
            "srtool_version")


def to_csv(report: EvalReport) -> str:
    """One row per (model, dataset, image), then one ``(mean)`` row per (model, dataset)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    metrics = report.metrics
    writer.writerow(csv_columns(metrics))
    common = (report.protocol, report.scale, report.srtool_version)

    def fmt(value: float | None) -> str:
        v = _number(value)
        return "" if v is None else (v if isinstance(v, str) else repr(float(v)))

    for r in report.results:
        for i in r.images:
            status = "failed" if i.failed else "ok"
            values = [fmt(getattr(i, m)) for m in metrics]
            writer.writerow((r.model, r.model_identity, r.name, i.name, *values, status, i.error or "", *common))
        status = "complete" if r.complete else f"incomplete ({len(r.failed)} failed)"
        writer.writerow((r.model, r.model_identity, r.name, "(mean)", *[fmt(r.mean(m)) for m in metrics], status, "", *common))
    return buffer.getvalue()


def _cell(text: str) -> str:
    """A Markdown table cell: a ``|`` in a label, dataset or image name would split it into two columns."""
    return str(text).replace("|", "\\|")


def to_markdown(report: EvalReport) -> str:
    lines = [f"# srtool eval: {title(report)}", ""]
    lines.append(f"srtool {report.srtool_version}, {report.created}. Scores are means of per-image scores.")
    lines.append("")
    metrics = report.metrics
    header = ["model"]
    for name in report.dataset_names:
        header += [f"{_cell(name)} {_heading(report, m)}" for m in metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for m in report.models:
        row = [_cell(m.label)]
        for name in report.dataset_names:
            row.extend(format_cells(report.cell(m.label, name), metrics))
        lines.append("| " + " | ".join(row) + " |")
    notes_text = metric_notes(report)
    if notes_text:
        lines += [""] + [f"{n}." for n in notes_text]
    notes = failure_notes(report)
    if notes:
        lines += ["", "\\* mean over the images that succeeded only (not comparable with published tables).", ""]
        lines += [f"- {n}" for n in notes]
    lines += ["", "## Models", ""]
    for m in report.models:
        lines.append(f"- **{m.label}**: identity `{m.identity}`, x{m.scale}, source `{m.source}`")
    for r in report.results:
        heads = " | ".join(_heading(report, m) for m in metrics)
        lines += ["", f"## {r.model} on {r.name}", "", f"LR: {r.lr_source}", "", f"| image | {heads} |",
                  "|---|" + "---:|" * len(metrics)]
        for i in r.images:
            if i.failed:  # "failed" and the error in the first two columns (in one with a single metric)
                cells = ["failed", _cell(i.error or "")] + [""] * (len(metrics) - 2)
                cells = cells if len(metrics) > 1 else [f"failed: {cells[1]}"]
                lines.append(f"| {_cell(i.name)} | " + " | ".join(cells) + " |")
            else:
                lines.append(f"| {_cell(i.name)} | " + " | ".join(f"{getattr(i, m):.{METRICS[m].digits + 2}f}" for m in metrics) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{c}**" for c in format_cells(r, metrics)) + " |")
    return "\n".join(lines).replace("|  |", "| |") + "\n"


def write_json(report: EvalReport, path, replace: bool = True) -> None:
    write_text_atomic(path, json.dumps(to_json_document(report), indent=2, allow_nan=False) + "\n", replace)


def write_csv(report: EvalReport, path, replace: bool = True) -> None:
    write_text_atomic(path, to_csv(report), replace)


def write_markdown(report: EvalReport, path, replace: bool = True) -> None:
    write_text_atomic(path, to_markdown(report), replace)
