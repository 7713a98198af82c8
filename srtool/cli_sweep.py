"""``srtool sweep``: a thin Typer group over :mod:`srtool.sweep` (run a grid) and
:mod:`srtool.sweep_report` (one table and figures)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from .cli_common import QuietOption, SetOption, err_console, out_console, print_error, set_quiet
from .errors import UserError

sweep_app = typer.Typer(
    help="Train a grid of runs (resumable; failures recorded) and report them as one table and figures. "
    "`srtool sweep --preset P --data D --out SWEEP_DIR --grid KEY=V1,V2 ...` runs; `srtool sweep report SWEEP_DIR` reports.",
    invoke_without_command=True,
)

_EvalOption = Annotated[
    Optional[list[str]],
    typer.Option("--eval", metavar="NAME|DIR", help="Dataset to score each point's best export on, as in srtool eval (repeatable)."),
]
_ProtocolOption = Annotated[str, typer.Option("--protocol", metavar="y|rgb|y-float", help="Metric protocol (see srtool eval).")]
_MetricOption = Annotated[
    Optional[list[str]],
    typer.Option("--metric", metavar="LIST", help="Metrics of the table, as in srtool eval: psnr, ssim, lpips, niqe (default psnr,ssim)."),
]
_LpipsWeightsOption = Annotated[
    Optional[str],
    typer.Option("--lpips-weights", metavar="FILE", help="torchvision ImageNet weights of the LPIPS backbone (offline machines)."),
]


def _sweep_report(sweep_dir: str, evals: Optional[list[str]], protocol: str, device: str, tile: Optional[int],
                  figure_image: Optional[str], metrics: Optional[list[str]] = None, lpips_weights: Optional[str] = None,
                  progress: bool = True, cache: bool = True) -> None:
    from .scoring import DEFAULT_METRICS
    from .sweep_report import cache_summary, evaluate_sweep, print_sweep_report

    report = evaluate_sweep(sweep_dir, evals, protocol, device, tile, metrics=metrics or list(DEFAULT_METRICS),
                            figure_image=figure_image, progress=progress, lpips_weights=lpips_weights, cache=cache)
    print_sweep_report(report, out_console)
    for line in cache_summary(report):
        err_console.print(escape(line), highlight=False, soft_wrap=True)
    for path in report.files:
        err_console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)


@sweep_app.callback()
def sweep(
    ctx: typer.Context,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Shipped preset name or .toml file.")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="Training set (as for srtool train; repeatable).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", metavar="SWEEP_DIR", help="Sweep folder: one run directory per point, sweep.json, report files.")] = None,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", metavar="KEY=V1,V2,...", help="A grid axis over a preset field, e.g. model.generator.n_blocks=8,16,32 (repeatable; the points are the product).")] = None,
    set_: SetOption = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", metavar="S1,S2,...", help="Train every point with each of these train.seed values (the table shows mean ± std).")] = None,
    zip_: Annotated[bool, typer.Option("--zip", help="Pair the grid axes element by element instead of taking their product.")] = False,
    evals: _EvalOption = None,
    protocol: _ProtocolOption = "y",
    metric: _MetricOption = None,
    lpips_weights: _LpipsWeightsOption = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Start every point's generator from this run directory or export (GAN presets).")] = None,
    vgg_weights: Annotated[Optional[str], typer.Option("--vgg-weights", help="VGG19 state dict for the perceptual loss.")] = None,
    allow_random_vgg: Annotated[bool, typer.Option("--allow-random-vgg", help="Accept --vgg-weights random (a smoke test: the perceptual loss is then meaningless).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Points trained at once (one GPU each when several are visible; the CPU threads split otherwise).")] = 1,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", metavar="N", help="End each point after N minutes with a checkpoint and an export (marked 'stopped').")] = None,
    retry: Annotated[bool, typer.Option("--retry", help="Run failed and time-stopped points again (from their last checkpoint).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate every point and print its `srtool train` command; train nothing.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live display.")] = True,
    quiet: QuietOption = False,
) -> None:
    """Run a grid of training runs (`srtool sweep --preset ... --grid ...`), or `srtool sweep report SWEEP_DIR`."""
    set_quiet(quiet)
    progress = progress and not quiet
    if ctx.invoked_subcommand is not None:
        given = [name for name, value in (("--preset", preset), ("--data", data), ("--out", out), ("--grid", grid)) if value]
        if given:
            raise UserError(f"srtool sweep {ctx.invoked_subcommand}: drop {', '.join(given)} (they belong to `srtool sweep` itself)")
        return
    from pathlib import Path

    from .sweep import SweepOptions, run_sweep

    if not preset or not out:
        raise UserError("srtool sweep needs --preset, --data, --out and --grid (or: srtool sweep report SWEEP_DIR)")
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise UserError(f"--seeds {seeds!r}: expected integers separated by commas, e.g. 0,1,2") from None
    options = SweepOptions(
        preset=preset, data=list(data or []), out=Path(out).expanduser(), grid=list(grid or []), overrides=list(set_ or []),
        seeds=seed_list, zip_axes=zip_, evals=list(evals or []), init_from=init_from, vgg_weights=vgg_weights,
        allow_random_vgg=allow_random_vgg, device=device,
        jobs=jobs, max_minutes=max_minutes, retry=retry, dry_run=dry_run, progress=progress,
    )
    say = (lambda message: err_console.print(escape(message), highlight=False, soft_wrap=True))
    if dry_run or not progress:
        result = run_sweep(options, say=say)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from .sweep import progress_counts

        columns = (TextColumn("[bold]sweep[/bold] {task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} it"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task(options.out.name, total=None)
            state: dict = {}

            def on_tick(running) -> None:
                if "points" in state:
                    done, total = progress_counts(state["points"], options.out)
                    bar.update(task, completed=done, total=total,
                               description=f"{options.out.name} ({len(running)} running)")

            def on_plan(points) -> None:
                state["points"] = points

            result = run_sweep(options, say=lambda m: bar.console.print(escape(m), highlight=False, soft_wrap=True),
                               on_tick=on_tick, on_plan=on_plan)
    if dry_run:
        for point in result.points:
            if point.status not in ("pending", "interrupted"):
                say(f"# {point.name}: {point.status}" + (f" ({point.reason})" if point.reason else ""))
        for command in result.commands:
            print(command)
        return
    summary = ", ".join(f"{result.count(s)} {s}" for s in ("done", "stopped", "failed", "interrupted") if result.count(s))
    err_console.print(f"sweep {escape(str(result.sweep_dir))}: {summary}", highlight=False, soft_wrap=True)
    for point in result.points:
        if point.status == "failed":
            print_error(f"[red]failed:[/red] {escape(point.name)}: {escape(point.reason or '')}")
    if not result.completed:
        raise typer.Exit(143 if result.interrupted == "SIGTERM" else 130)  # the shell's 128 + signal number
    if result.count("done") + result.count("stopped"):
        if options.evals:
            _sweep_report(str(options.out), None, protocol, device, None, None, metric, lpips_weights, progress)
        else:
            from .sweep_report import plot_sweep_curves
            from .sweep import read_manifest

            path = plot_sweep_curves(options.out, read_manifest(options.out)["points"])
            err_console.print(f"wrote {escape(str(path))} (give --eval NAME to get the table and comparison.png)",
                              highlight=False, soft_wrap=True)
    if result.count("failed"):
        raise typer.Exit(1)


@sweep_app.command("report")
def sweep_report(
    sweep_dir: Annotated[str, typer.Argument(metavar="SWEEP_DIR", help="Folder of an srtool sweep.")],
    evals: _EvalOption = None,
    protocol: _ProtocolOption = "y",
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where networks run.")] = "auto",
    tile: Annotated[Optional[int], typer.Option("--tile", metavar="N", help="Tile size (LR pixels) for bounded memory.")] = None,
    figure_image: Annotated[Optional[str], typer.Option("--figure-image", metavar="NAME", help="Image of comparison.png: NAME or DATASET/NAME (default: where the points differ most).")] = None,
    metric: _MetricOption = None,
    lpips_weights: _LpipsWeightsOption = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Score every point and draw every figure again (ignore SWEEP_DIR/report-cache.json, which is rewritten).")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
    quiet: QuietOption = False,
) -> None:
    """Score each point's best export (as srtool eval does) and write report.{json,csv,md}, curves.png, comparison.png.

    Scores of exports, datasets and options that did not change come from SWEEP_DIR/report-cache.json."""
    set_quiet(quiet)
    _sweep_report(sweep_dir, evals, protocol, device, tile, figure_image, metric, lpips_weights, progress and not quiet,
                  cache=not no_cache)
