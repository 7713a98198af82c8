"""``srtool models``: a thin Typer group over :mod:`srtool.model_tools`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .cli_common import QuietOption, out_console, set_quiet

models_app = typer.Typer(
    help="Inspect, list, convert and export super-resolution models (srtool's and community checkpoints).",
    no_args_is_help=True,
)

_File = Annotated[str, typer.Argument(help="Model file: .pth/.pt/.ckpt state dict or .safetensors.", metavar="FILE")]
_Scale = Annotated[Optional[int], typer.Option("--scale", metavar="S", help="Disambiguate the scale (old-layout ESRGAN x3; 1 for 1x restoration models).")]
_Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")]


@models_app.command("inspect")
def models_inspect(
    file: _File,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    scale: _Scale = None,
    quiet: QuietOption = False,
) -> None:
    """Architecture, scale, channels, parameters, size requirements, precisions, purpose and sha256 of a model file."""
    set_quiet(quiet)
    from .model_tools import inspect_model

    info = inspect_model(file, scale)
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    table = Table(title=escape(info["file"]), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    req = info["size_requirements"]
    rows = [
        ("architecture", f"{info['architecture']}  [{info['loader']}, layout {info['layout']}]"),
        ("scale", f"x{info['scale']}"),
        ("channels", f"{info['input_channels']} in, {info['output_channels']} out"),
        ("parameters", f"{info['parameters']:,}"),
        ("size requirements", f"multiple of {req['multiple_of']}, minimum {req['minimum']}" + (", square" if req["square"] else "")),
        ("precisions", ", ".join(info["precisions"])),
        ("tile context", f"{info['tile_context']} px (spandrel's tiling advice: {info['tiling']})"),
        ("purpose / tags", f"{info['purpose']} / {', '.join(map(str, info['tags'])) or '-'}"),
        ("sha256", info["sha256"]),
    ]
    for k, v in rows:
        table.add_row(k, escape(v))
    out_console.print(table)


@models_app.command("list")
def models_list(quiet: QuietOption = False) -> None:
    """The architectures srtool loads (with each upstream project's code licence) and the named official models."""
    set_quiet(quiet)
    from .model_tools import list_architectures, list_named_models

    table = Table(title="architectures srtool loads (weights files carry their own licence: check the model's page)")
    for col in ("architecture", "loader", "upstream", "licence", "typical files"):
        table.add_column(col, overflow="fold")
    for row in list_architectures():
        table.add_row(*(escape(row[k]) for k in ("architecture", "loader", "upstream", "licence", "files")))
    out_console.print(table)
    zoo = Table(title="named official models: `--model NAME` downloads the release file once (sha256-checked) into the cache")
    for col in ("name", "architecture", "scale", "size", "licence", "cached"):
        zoo.add_column(col, overflow="fold", no_wrap=col in ("name", "size"))
    for row in list_named_models():
        zoo.add_row(*(escape(str(row[k])) for k in ("name", "architecture", "scale", "size", "licence", "cached")))
    out_console.print(zoo)


@models_app.command("convert")
def models_convert(
    file: _File,
    out: Annotated[str, typer.Argument(help="Output .safetensors file.", metavar="OUT.safetensors")],
    scale: _Scale = None,
    overwrite: _Overwrite = False,
    quiet: QuietOption = False,
) -> None:
    """Convert a loadable checkpoint to a .safetensors file srtool loads directly (no unpickling ever again)."""
    set_quiet(quiet)
    from .model_tools import convert_model

    path = convert_model(file, out, scale=scale, overwrite=overwrite)
    typer.echo(f"wrote {path}")


@models_app.command("export")
def models_export(
    file: _File,
    out: Annotated[str, typer.Argument(help="Output .onnx file.", metavar="OUT.onnx")],
    opset: Annotated[int, typer.Option("--opset", metavar="N", help="ONNX opset version.")] = 17,
    fp16: Annotated[bool, typer.Option("--fp16", help="Export with float16 weights and input.")] = False,
    scale: _Scale = None,
    overwrite: _Overwrite = False,
    quiet: QuietOption = False,
) -> None:
    """Export to ONNX (dynamic batch, height, width; RGB in [0, 1]); inputs must meet the size requirements."""
    set_quiet(quiet)
    from .model_tools import export_onnx

    info = export_onnx(file, out, opset=opset, fp16=fp16, scale=scale, overwrite=overwrite)
    req = info["size_requirements"]
    typer.echo(f"wrote {info['file']} ({info['architecture']} x{info['scale']}, opset {info['opset']}, {info['dtype']}; "
               f"input sides: multiple of {req['multiple_of']}, minimum {req['minimum']})")
