"""Writers for ``srtool eval`` results: console table, JSON, CSV and Markdown.

Every output states the protocol next to the numbers, the srtool version, and each model's identity
(sha256 of its weights file, or ``bicubic``), so a number can always be traced back to how and with
what it was computed. The JSON schema (``"schema": "srtool-eval/1"``) is documented in the README
section of ``srtool eval`` and in :func:`to_json_document`.

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
from .evaluate import DatasetResult, EvalReport
from .metrics import PROTOCOL_DESCRIPTIONS

SCHEMA = "srtool-eval/1"


def _number(value: float | None) -> float | str | None:
    """JSON has no infinity: a perfect reconstruction's PSNR is written as the string "inf"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def format_cell(result: DatasetResult | None) -> tuple[str, str]:
    """('28.42', '0.8101') for a table; a '*' marks a mean over an incomplete set, 'failed' no result."""
    if result is None:
        return "-", "-"
    if not result.succeeded:
        return "failed", "failed"
    mark = "" if result.complete else "*"
    return f"{result.psnr:.2f}{mark}", f"{result.ssim:.4f}{mark}"


def failure_notes(report: EvalReport) -> list[str]:
    notes = []
    for r in report.results:
        for image in r.failed:
            notes.append(f"{r.model} failed on {r.name}/{image.name}: {image.error}")
    return notes


def title(report: EvalReport) -> str:
    return f"PSNR (dB) / SSIM, x{report.scale}, protocol {report.protocol}"


def rich_table(report: EvalReport):
    """The study's table shape: rows = models, a PSNR and an SSIM column per dataset."""
    from rich.table import Table

    table = Table(title=title(report), title_justify="left")
    table.add_column("model", style="bold")
    for name in report.dataset_names:
        table.add_column(f"{name}\nPSNR", justify="right")
        table.add_column(f"{name}\nSSIM", justify="right")
    for model in report.models:
        row = [model.label]
        for name in report.dataset_names:
            row.extend(format_cell(report.cell(model.label, name)))
        table.add_row(*row)
    return table


def print_report(report: EvalReport, console) -> None:
    """The table, then the protocol in words and any failures (one line each), on ``console``."""
    from rich.markup import escape

    console.print(rich_table(report))
    console.print(f"protocol {report.protocol}: {PROTOCOL_DESCRIPTIONS[report.protocol]}", highlight=False)
    notes = failure_notes(report)
    if notes:
        console.print("* mean over the images that succeeded only (not comparable with published tables)", highlight=False)
        for note in notes:
            console.print(f"[red]{escape(note)}[/red]", highlight=False, soft_wrap=True)


def to_json_document(report: EvalReport) -> dict[str, Any]:
    """The JSON document (schema ``srtool-eval/1``)::

        {"schema": "srtool-eval/1", "srtool_version": str, "created": ISO-8601 UTC,
         "protocol": "y" | "rgb" | "y-float", "protocol_description": str, "scale": int,
         "models": [{"label", "name", "identity" (sha256 hex or "bicubic"), "source", "scale"}],
         "results": [{"model": label, "model_identity", "dataset", "dataset_path", "lr_source",
                      "n_images", "n_failed", "complete": bool,
                      "psnr": mean | null, "ssim": mean | null,   (over the images that succeeded)
                      "images": [{"name", "psnr": float | "inf" | null, "ssim": float | null,
                                  "seconds": float, "error": str | null}]}]}
    """
    return {
        "schema": SCHEMA,
        "srtool_version": report.srtool_version,
        "created": report.created,
        "protocol": report.protocol,
        "protocol_description": PROTOCOL_DESCRIPTIONS[report.protocol],
        "scale": report.scale,
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
                "psnr": _number(r.psnr),
                "ssim": _number(r.ssim),
                "images": [
                    {"name": i.name, "psnr": _number(i.psnr), "ssim": _number(i.ssim),
                     "seconds": round(i.seconds, 4), "error": i.error}
                    for i in r.images
                ],
            }
            for r in report.results
        ],
    }


CSV_COLUMNS = ("model", "model_identity", "dataset", "image", "psnr", "ssim", "status", "error",
               "protocol", "scale", "srtool_version")


def to_csv(report: EvalReport) -> str:
    """One row per (model, dataset, image), then one ``(mean)`` row per (model, dataset)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    common = (report.protocol, report.scale, report.srtool_version)

    def fmt(value: float | None) -> str:
        v = _number(value)
        return "" if v is None else (v if isinstance(v, str) else repr(float(v)))

    for r in report.results:
        for i in r.images:
            status = "failed" if i.failed else "ok"
            writer.writerow((r.model, r.model_identity, r.name, i.name, fmt(i.psnr), fmt(i.ssim), status, i.error or "", *common))
        status = "complete" if r.complete else f"incomplete ({len(r.failed)} failed)"
        writer.writerow((r.model, r.model_identity, r.name, "(mean)", fmt(r.psnr), fmt(r.ssim), status, "", *common))
    return buffer.getvalue()


def to_markdown(report: EvalReport) -> str:
    lines = [f"# srtool eval: {title(report)}", ""]
    lines.append(f"srtool {report.srtool_version}, {report.created}. Scores are means of per-image scores.")
    lines.append("")
    header = ["model"]
    for name in report.dataset_names:
        header += [f"{name} PSNR", f"{name} SSIM"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for m in report.models:
        row = [m.label]
        for name in report.dataset_names:
            row.extend(format_cell(report.cell(m.label, name)))
        lines.append("| " + " | ".join(row) + " |")
    notes = failure_notes(report)
    if notes:
        lines += ["", "\\* mean over the images that succeeded only (not comparable with published tables).", ""]
        lines += [f"- {n}" for n in notes]
    lines += ["", "## Models", ""]
    for m in report.models:
        lines.append(f"- **{m.label}**: identity `{m.identity}`, x{m.scale}, source `{m.source}`")
    for r in report.results:
        lines += ["", f"## {r.model} on {r.name}", "", f"LR: {r.lr_source}", "", "| image | PSNR | SSIM |", "|---|---:|---:|"]
        for i in r.images:
            if i.failed:
                lines.append(f"| {i.name} | failed | {(i.error or '').replace('|', '/')} |")
            else:
                lines.append(f"| {i.name} | {i.psnr:.4f} | {i.ssim:.6f} |")
        psnr_cell, ssim_cell = format_cell(r)
        lines.append(f"| **mean** | **{psnr_cell}** | **{ssim_cell}** |")
    return "\n".join(lines).replace("|  |", "| |") + "\n"


def write_json(report: EvalReport, path) -> None:
    write_text_atomic(path, json.dumps(to_json_document(report), indent=2, allow_nan=False) + "\n")


def write_csv(report: EvalReport, path) -> None:
    write_text_atomic(path, to_csv(report))


def write_markdown(report: EvalReport, path) -> None:
    write_text_atomic(path, to_markdown(report))
