"""Seeing a run: rich live display, ``log.jsonl``, TensorBoard events (if installed) and ``curves.png``.

Only rank 0 builds a :class:`RunMonitor`. ``log.jsonl`` holds one JSON object per logged step
(``{"kind": "train", "iter", "lr", "it_per_s", "loss/<term>": ...}``) and per validation
(``{"kind": "val", "iter", "<dataset>/<metric>", ...}``, one key per validated metric: psnr, ssim,
lpips, niqe). On ``--resume`` records past the
checkpoint's iteration are dropped, so the log and the curves describe exactly the resumed run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from ..atomic import atomic_path, write_text_atomic


def read_log(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of ``log.jsonl``; a line cut by a kill is ignored, any other damaged line (not JSON, or
    JSON that is not an object) is skipped with a warning naming the file and line."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) or not line.strip():  # the last line cut by a kill: nothing to say
                continue
            record = None
        if isinstance(record, dict) and isinstance(record.get("iter", 0), int):
            records.append(record)
        elif warn is not None:
            warn(f"{path}: line {number} is not a log record (a JSON object with an integer iter); skipped")
    return records


def plot_curves(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss curves (log scale) and every validated metric per dataset (arrow = better direction), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    g_terms = sorted({k for r in train for k in r if k.startswith("loss/") and not k.startswith("loss/d_")})
    d_terms = sorted({k for r in train for k in r if k.startswith("loss/d_")})
    from ..scoring import METRICS

    found = {k.rsplit("/", 1)[1] for r in val for k in r if "/" in k}
    metrics = [m for m in METRICS if m in found] or ["psnr", "ssim"]
    datasets = sorted({k.rsplit("/", 1)[0] for r in val for k in r if "/" in k and k.rsplit("/", 1)[1] in METRICS})
    rows = 1 + (len(metrics) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4.25 * rows), constrained_layout=True)
    fig.suptitle(title, fontsize=13)
    panels = [(axes[0][0], g_terms, "generator losses"), (axes[0][1], d_terms, "discriminator losses")]
    if not d_terms:  # PSNR stage: the second panel shows the learning rate instead
        panels = panels[:1]
        ax = axes[0][1]
        ax.set_title("learning rate (generator)")
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        pts = [(r["iter"], r["lr"]) for r in train if "lr" in r]
        if pts:
            ax.plot(*zip(*pts), color="tab:purple")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax, terms, name in panels:
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        plotted = False
        for term in terms:
            pts = [(r["iter"], r[term]) for r in train if isinstance(r.get(term), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=term.removeprefix("loss/"), linewidth=1.2)
                plotted = plotted or any(v > 0 for _, v in pts)
        if plotted and all(r.get(t, 1) > 0 for r in train for t in terms if isinstance(r.get(t), (int, float))):
            ax.set_yscale("log")
        if terms:
            ax.legend(loc="upper right", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center",
                    va="center", transform=ax.transAxes, color="gray")
    metric_axes = [axes[1 + i // 2][i % 2] for i in range(len(metrics))]
    if len(metrics) % 2:
        axes[-1][1].axis("off")
    for ax, metric in zip(metric_axes, metrics):
        info = METRICS[metric]
        ax.set_title(f"validation {info.label}{f' ({info.unit})' if info.unit else ''}, {info.direction} is better {info.arrow}")
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        for ds in datasets:
            pts = [(r["iter"], r[f"{ds}/{metric}"]) for r in val if f"{ds}/{metric}" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=4, label=ds)
                ax.annotate(f"{pts[-1][1]:.{info.digits}f}", pts[-1], textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        if datasets:
            ax.legend(loc="lower right" if info.higher_is_better else "upper right", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def progress_line(iteration: int, total: int, values: dict[str, float], rate: float) -> str:
    """One self-contained line for logs: iteration, losses, speed and time left."""
    losses = "  ".join(f"{k.removeprefix('loss/')} {v:.4g}" for k, v in values.items() if k.startswith("loss/"))
    eta = "-"
    if rate > 0:
        seconds = int(round((total - iteration) / rate))
        eta = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    parts = [f"iter {iteration}/{total} ({100 * iteration / max(total, 1):.1f}%)", losses]
    if "lr" in values:
        parts.append(f"lr {values['lr']:.3g}")
    parts += [f"{rate:.3g} it/s", f"ETA {eta}"]
    return "  ".join(p for p in parts if p)


class RunMonitor:
    """Rank 0's view of the run: display, JSONL, TensorBoard and curves."""

    def __init__(self, run_dir: Path, title: str, start: int, total: int, progress: bool = True,
                 resume_from: int | None = None, warn: Callable[[str], None] | None = None,
                 quiet: bool = False):
        self.run_dir = Path(run_dir)
        self.title = title
        self.log_path = self.run_dir / "log.jsonl"
        records = read_log(self.log_path, warn)
        if resume_from is not None:
            records = [r for r in records if r.get("iter", 0) <= resume_from]
            write_text_atomic(self.log_path, "".join(json.dumps(r) + "\n" for r in records))
        elif self.log_path.exists():
            self.log_path.unlink()
        self.records = records
        self._fh = open(self.log_path, "a", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_from)
        except ImportError:
            pass
        self.status = ""
        self.val_status = ""
        self._progress = None
        self._task = None
        self._rate_mark = (time.perf_counter(), start)
        self._live = None
        self.total = total
        self.quiet = quiet
        self._plain = None  # stderr is not a terminal (a log file, CI, nohup): plain lines at the log cadence
        if progress:
            from rich.console import Console, Group
            from rich.live import Live
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.text import Text

            console = Console(stderr=True)
            if not console.is_terminal:
                self._plain = console
                progress = False
        if progress:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console,
            )
            self._task = self._progress.add_task(title, total=total, completed=start, rate="")
            self._status_line = Text("", style="dim")  # second line: losses and the last validation
            self._live = Live(Group(self._progress, self._status_line), console=console, refresh_per_second=4)
            self._live.start()

    def console_print(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(message, highlight=False)
        else:
            from rich.console import Console

            Console(stderr=True).print(message, highlight=False, soft_wrap=True)

    def advance(self, iteration: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=iteration)

    def _write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def log_train(self, iteration: int, values: dict[str, float]) -> dict[str, Any]:
        now = time.perf_counter()
        t0, i0 = self._rate_mark
        rate = (iteration - i0) / (now - t0) if now > t0 and iteration > i0 else 0.0
        self._rate_mark = (now, iteration)
        record = {"kind": "train", "iter": iteration, "time": time.time(), "it_per_s": round(rate, 4), **values}
        self._write(record)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, iteration)
            self.tb.add_scalar("it_per_s", rate, iteration)
        losses = " ".join(f"{k.removeprefix('loss/')} {v:.4g}" for k, v in values.items() if k.startswith("loss/"))
        self.status = losses
        if self._plain is not None:
            self._plain.print(progress_line(iteration, self.total, values, rate), highlight=False, soft_wrap=True)
        if self._progress is not None:
            self._progress.update(self._task, completed=iteration, rate=f"{rate:.2f} it/s")
            self._set_status()
        return record

    def validated_at(self, iteration: int) -> bool:
        """Whether the log holds a validation of ``iteration`` (this run's, or before the resume)."""
        return any(r.get("kind") == "val" and r.get("iter") == iteration for r in self.records)

    def log_validation(self, iteration: int, scores: dict[str, dict[str, float]], best: bool) -> None:
        record: dict[str, Any] = {"kind": "val", "iter": iteration, "time": time.time()}
        from ..scoring import score_lines

        for ds, s in scores.items():
            for metric, value in s.items():
                record[f"{ds}/{metric}"] = value
                if self.tb is not None:
                    self.tb.add_scalar(f"val/{ds}/{metric}", value, iteration)
        self._write(record)
        self.val_status = "val " + " ".join(f"{ds} {'  '.join(score_lines(s))}" for ds, s in scores.items())
        self._set_status()
        if not self.quiet:
            self.console_print(f"[cyan]validation[/cyan] iter {iteration}: {self.val_status}" + (" [green](best)[/green]" if best else ""))
        self.refresh_curves()

    def _set_status(self) -> None:
        if self._live is not None:
            self._status_line.plain = "  ".join(part for part in ("losses " + self.status if self.status else "",
                                                                   self.val_status) if part)

    def refresh_curves(self) -> None:
        plot_curves(self.records, self.run_dir / "curves.png", self.title)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._progress = None
        if self.tb is not None:
            self.tb.close()
        self._fh.close()
