"""``srtool sweep``: a grid of ordinary ``srtool train`` runs that resumes, survives failures and scales out.

A sweep is a preset, training data, common ``--set`` overrides and one or more grid axes
(``--grid model.generator.n_blocks=8,16,32``), optionally crossed with seeds. Each point of the
Cartesian product (or of the zipped axes with ``zip_axes``) is the run directory of one ordinary
``srtool train`` command under ``SWEEP_DIR/<name>``, where the name spells the point's grid values
(``n_blocks=8,hr_crop=48,seed=0``). Points run as child processes (``python -m srtool train``), so an
out-of-memory kill or a crash ends one point, not the sweep, and ``--dry-run`` prints exactly the
commands that would run (to hand to torchrun or a cluster scheduler).

Order of work: every point is resolved and validated against the preset schema (the same ``--set``
semantics as ``srtool train``) and checked against what is already on disk *before* the first one
starts. Re-running the same command skips finished points, resumes interrupted ones with
``srtool train --resume`` (bitwise), and leaves failed or time-budget-stopped points alone unless
``retry`` is set. A point whose resolved configuration or data differ from the run on disk is an
error, never a silent overwrite.

The manifest ``SWEEP_DIR/sweep.json`` (schema ``srtool-sweep/1``) records the grids used and, per
point: its grid values, overrides, resolved configuration, status (pending, running, done, stopped,
failed, interrupted), the reason of a failure and the command. The parent process is its only writer
and holds ``SWEEP_DIR/.sweep.lock`` while it runs, so two sweeps never drive the same folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .config import Preset, load_preset, parse_override
from .errors import Terminated, UserError, raise_terminated
from .threads import usable_cores

SCHEMA = "srtool-sweep/1"
MANIFEST = "sweep.json"
LOCK = ".sweep.lock"
LOGS = "logs"
MAX_NAME = 120
FINISHED = ("done", "stopped", "failed")


# ------------------------------------------------------------------------------------------ spec


@dataclass
class Axis:
    """One ``--grid KEY=V1,V2,...`` axis: the dotted preset key and its raw (TOML literal) values."""

    key: str
    values: list[str]


@dataclass
class SweepOptions:
    """Everything ``srtool sweep`` takes; the library entry point is :func:`run_sweep`."""

    preset: str
    data: list[Path | str]  # as given (see check_distinct_data); resolved by prepare_sweep
    out: Path
    grid: list[str]
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    zip_axes: bool = False
    evals: list[str] = field(default_factory=list)
    init_from: str | None = None
    vgg_weights: str | None = None
    allow_random_vgg: bool = False  # passed to each point's train: --vgg-weights random as a smoke test
    device: str = "auto"
    jobs: int = 1
    max_minutes: float | None = None
    retry: bool = False
    dry_run: bool = False
    progress: bool = True


@dataclass
class Point:
    """One run of the sweep."""

    name: str
    values: dict[str, str]  # grid key -> raw value (seed under "train.seed")
    overrides: list[str]  # common overrides, then this point's grid values
    preset: Preset
    fields: dict[str, str] = field(default_factory=dict)  # short key (as in the name) -> raw value
    status: str = "pending"
    reason: str | None = None
    iteration: int = 0

    @property
    def config(self) -> dict[str, Any]:
        return self.preset.model_dump(mode="json")

    @property
    def total(self) -> int:
        return self.preset.train.total_iters


def split_values(text: str) -> list[str]:
    """Split ``8,16,32`` on the commas that are not inside brackets or quotes (``['a','b'],['c']``)."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return parts


def parse_axis(item: str) -> Axis:
    """``--grid model.generator.n_blocks=8,16,32`` -> Axis; a malformed one is a one-line error."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not raw.strip():
        raise UserError(f"--grid {item!r}: expected KEY=V1,V2,... e.g. model.generator.n_blocks=8,16,32")
    parse_override(f"{key}={raw}")  # same key rules as --set
    values = split_values(raw)
    if any(not v for v in values):
        raise UserError(f"--grid {item!r}: empty value in the list")
    if len(set(values)) != len(values):
        raise UserError(f"--grid {item!r}: a value is repeated")
    return Axis(key, values)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where two axes share a last component."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def point_name(values: dict[str, str], short: dict[str, str]) -> str:
    """``n_blocks=8,hr_crop=48,seed=0``: safe in every file system (odd characters become ``_``; an
    over-long name is cut and keeps a hash of the full one, so names stay unique)."""
    text = ",".join(f"{short.get(k, k)}={v}" for k, v in values.items())
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text).lstrip(".") or "_"
    if safe != text or len(safe) > MAX_NAME:
        safe = f"{safe[: MAX_NAME - 9]}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def _seed_values(options: SweepOptions) -> list[str]:
    if options.seeds:
        if len(set(options.seeds)) != len(options.seeds) or any(s < 0 for s in options.seeds):
            raise UserError(f"--seeds {','.join(map(str, options.seeds))}: seeds must be distinct and >= 0")
        return [str(s) for s in options.seeds]
    return [str(load_preset(options.preset, options.overrides).train.seed)]


def plan_points(options: SweepOptions) -> list[Point]:
    """Every point of the grid, resolved and validated (an error names the point and the field)."""
    load_preset(options.preset, options.overrides)  # the common part alone must be valid too
    axes = [parse_axis(item) for item in options.grid]
    if not axes:
        raise UserError("give at least one --grid KEY=V1,V2,... (e.g. --grid model.generator.n_blocks=8,16,32)")
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise UserError(f"--grid: the key {next(k for k in keys if keys.count(k) > 1)} is given twice")
    if "train.seed" in keys and options.seeds:
        raise UserError("give seeds either with --seeds or with --grid train.seed=..., not both")
    if options.zip_axes:
        lengths = {len(a.values) for a in axes}
        if len(lengths) > 1:
            raise UserError(f"--zip needs grid axes of equal length; got {', '.join(f'{a.key} ({len(a.values)})' for a in axes)}")
        combos = [tuple(a.values[i] for a in axes) for i in range(len(axes[0].values))]
    else:
        combos = list(product(*(a.values for a in axes)))
    seed_axis = [] if "train.seed" in keys else ["train.seed"]
    seeds = _seed_values(options) if seed_axis else [""]
    short = _short_keys(keys + seed_axis)
    points, names, configs = [], {}, {}
    for combo in combos:
        for seed in seeds:
            values = dict(zip(keys, combo))
            if seed_axis:
                values["train.seed"] = seed
            overrides = [*options.overrides, *(f"{k}={v}" for k, v in values.items())]
            name = point_name(values, short)
            try:
                preset = load_preset(options.preset, overrides)
            except UserError as exc:
                raise UserError(f"sweep point {name}: {exc}") from None
            if name in names:
                raise UserError(f"sweep points {names[name]} and {values} both get the folder name {name}")
            names[name] = values
            same = configs.setdefault(json.dumps(preset.model_dump(mode="json"), sort_keys=True), name)
            if same != name:  # e.g. train.lr=0.0001,1e-4: one training twice
                raise UserError(f"sweep points {same} and {name} are the same configuration (a grid value is spelt twice)")
            points.append(Point(name, values, overrides, preset, {short[k]: v for k, v in values.items()}))
    return points


def replaced_overrides(options: SweepOptions) -> list[str]:
    """One notice per ``--set`` key that ``--grid`` or ``--seeds`` also gives: each point's value replaces the
    common one (a base plus variations), which the user may not have meant."""
    varied = {parse_axis(item).key: "--grid" for item in options.grid}
    if options.seeds:
        varied.setdefault("train.seed", "--seeds")
    notices = []
    for item in options.overrides:
        key = ".".join(parse_override(item)[0])
        if key in varied:
            notices.append(f"--set {key}={item.partition('=')[2].strip()} is replaced in every point: "
                           f"{varied[key]} varies {key}")
    return notices


# -------------------------------------------------------------------------------------- manifest


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{sweep_dir}: not a sweep folder (no {MANIFEST})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    if doc.get("schema") != SCHEMA:
        raise UserError(f"{path}: not a {SCHEMA} manifest")
    return doc


def write_manifest(sweep_dir: Path, doc: dict[str, Any]) -> None:
    write_text_atomic(Path(sweep_dir) / MANIFEST, json.dumps(doc, indent=2) + "\n")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``train.lr: 0.0001 on disk, 0.0002 now`` for each dotted field that differs."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k)!r} on disk, {b.get(k)!r} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _latest_iteration(run_dir: Path) -> int:
    from .train.checkpoint import CheckpointDir

    numbered = CheckpointDir(run_dir, 1).numbered()
    return numbered[-1][0] if numbered else 0


def reconcile(points: list[Point], sweep_dir: Path, data: list[Path], manifest: dict[str, Any] | None,
              retry: bool, init_from: str | None = None) -> None:
    """Set each point's status from what is on disk; a point that disagrees with its run is an error."""
    recorded = {p["name"]: p for p in (manifest or {}).get("points", [])}
    problems = []
    for point in points:
        run_dir = sweep_dir / point.name
        entry = recorded.get(point.name, {})
        if entry and entry.get("config") != point.config:
            diff = "; ".join(config_diff(entry["config"], point.config)[:4])
            problems.append(f"sweep point {point.name}: its resolved config differs from the sweep's record ({diff})")
            continue
        if not (run_dir / "run.json").is_file():
            if run_dir.exists() and not entry and any(run_dir.iterdir()):
                problems.append(f"{run_dir}: exists and is not a run of this sweep; move it away or choose another --out")
            elif entry.get("status") == "failed" and not retry:  # failed while setting up
                point.status, point.reason = "failed", entry.get("reason")
            continue  # pending (a folder the sweep made but training never set up is started over)
        try:
            on_disk = load_preset(str(run_dir / "preset.toml")).model_dump(mode="json")
            run_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except (UserError, OSError, ValueError) as exc:
            problems.append(f"sweep point {point.name}: its run in {run_dir} is unreadable ({str(exc).splitlines()[0]})")
            continue
        if on_disk != point.config:
            diff = "; ".join(config_diff(on_disk, point.config)[:4])
            problems.append(f"sweep point {point.name}: its resolved config differs from the run on disk ({diff}); "
                            f"use another --out, or remove {run_dir} to train it again")
            continue
        if [str(Path(p)) for p in run_info.get("data", [])] != [str(p) for p in data]:
            problems.append(f"sweep point {point.name}: the run on disk was trained on {run_info.get('data')}, "
                            f"not on {[str(p) for p in data]}")
            continue
        wanted_init = init_from_for(init_from, point) if init_from else None
        if run_info.get("init_from") not in _init_records(wanted_init):
            problems.append(f"sweep point {point.name}: the run on disk started from --init-from "
                            f"{run_info.get('init_from')!r}, not {wanted_init!r}")
            continue
        point.iteration = _latest_iteration(run_dir)
        if point.iteration >= point.total:
            point.status = "done"
        elif entry.get("status") in ("failed", "stopped") and not retry:
            point.status, point.reason = entry["status"], entry.get("reason")
        else:
            point.status = "interrupted"
    if problems:
        raise UserError("\n".join(problems))


def _lasting_spec(spec: str) -> str:
    """A dataset as the manifest keeps it: a folder made absolute (``sweep report`` may run from another
    folder), a known name that means the data dir's copy (``Set5``) as typed, as eval resolves them."""
    from .prepare.paths import given_dataset_folder

    path = given_dataset_folder(spec)
    return str(path.resolve()) if path is not None and path.exists() else spec


def manifest_document(options: SweepOptions, points: list[Point], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest: this invocation's grid added to the grids used before, every point ever planned."""
    grid = {"grid": list(options.grid), "zip": options.zip_axes, "seeds": options.seeds, "overrides": list(options.overrides)}
    grids = list((previous or {}).get("grids", []))
    if grid not in grids:
        grids.append(grid)
    by_name = {p["name"]: p for p in (previous or {}).get("points", [])}
    for point in points:
        old = by_name.get(point.name, {})
        by_name[point.name] = {
            "name": point.name, "values": point.values, "overrides": point.overrides, "config": point.config,
            "status": point.status, "reason": point.reason,
            "iteration": point.iteration, "total": point.total,
            "started": old.get("started"), "finished": old.get("finished"),
        }
    evals = [_lasting_spec(e) for e in options.evals] or list((previous or {}).get("eval", []))
    return {"schema": SCHEMA, "preset": options.preset, "data": [_lasting_spec(str(p)) for p in options.data], "eval": evals,
            "grids": grids, "points": list(by_name.values())}


# -------------------------------------------------------------------------------------- commands


def train_args(options: SweepOptions, point: Point, sweep_dir: Path, anywhere: bool = False) -> list[str]:
    """The ``srtool train`` arguments of a point: a fresh run, or ``--resume`` of an interrupted one.
    ``anywhere``: for a command printed to be run from another directory, paths are absolute."""
    def absolute(spec: str) -> str:
        return str(Path(spec).expanduser().resolve()) if anywhere and Path(spec).expanduser().exists() else spec

    run_dir = sweep_dir.expanduser().resolve() / point.name if anywhere else sweep_dir / point.name
    extra = (["--vgg-weights", absolute(options.vgg_weights)] if options.vgg_weights else [])
    extra += ["--allow-random-vgg"] if options.allow_random_vgg else []
    extra += ["--device", options.device] if options.device != "auto" else []
    if point.status == "interrupted":
        return ["train", "--resume", str(run_dir), *extra, "--no-progress"]
    args = ["train", "--preset", absolute(options.preset)]
    for path in options.data:
        args += ["--data", str(path)]
    args += ["--out", str(run_dir)]
    for item in point.overrides:
        args += ["--set", item]
    if options.init_from:
        args += ["--init-from", absolute(init_from_for(options.init_from, point))]
    if run_dir.exists() and not (run_dir / "run.json").exists() and any(run_dir.iterdir()):
        args.append("--overwrite")  # the sweep's own folder, left by a kill before training was set up
    return [*args, *extra, "--no-progress"]


def _init_records(spec: str | None) -> set[str | None]:
    """What ``run.json`` may record for ``--init-from spec``: the path made absolute, for a run directory
    the export file it holds (older runs recorded the directory itself)."""
    from .train.runstate import init_weights_file, record_path

    records = {record_path(spec, hash_file=False)[0]}
    with contextlib.suppress(UserError):  # a folder without exports: only the folder itself can match
        records.add(record_path(init_weights_file(spec), hash_file=False)[0])
    return records


def init_from_for(template: str, point: Point) -> str:
    """``--init-from`` of a point: ``{n_blocks}``, ``{seed}``... are replaced by the point's grid values, so
    each point of a GAN sweep can start from the PSNR-sweep point of the same architecture."""
    try:
        return template.format(**point.fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--init-from {template!r}: {exc} is not a grid key of this sweep "
                        f"(available: {', '.join('{' + k + '}' for k in point.fields)})") from None


def shell_command(args: list[str]) -> str:
    return shlex.join(["srtool", *args])


# ----------------------------------------------------------------------------------------- running


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Exclusive hold of ``SWEEP_DIR`` for this process (released by the OS if the process dies)."""
    import fcntl

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"{sweep_dir}: another srtool sweep is running in this folder") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def visible_gpus(device: str) -> list[str]:
    """GPU ids to hand out one per point (empty: CPU, or a single GPU that every point shares)."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ids if len(ids) > 1 else []


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A point's process gets SIGTERM (checkpoint, then exit) if the sweep process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def failure_reason(log_path: Path, returncode: int) -> str:
    """The child's own one-line error(s) from its log, else how it ended."""
    lines = []
    with contextlib.suppress(OSError):
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(("error:", "internal error:"))]
    if errors:
        return " / ".join(errors)[:500]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the system's out-of-memory killer?)" if -returncode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    tail = [ln for ln in lines if ln.strip()][-1:] or [f"exit status {returncode}"]
    return f"exit status {returncode}: {tail[0][:300]}"


@dataclass
class _Running:
    point: Point
    process: subprocess.Popen
    log: Any
    started: float
    gpu: str | None
    budget_hit: bool = False
    wall_started: float = field(default_factory=time.time)
    training_since: float | None = None  # monotonic time the trainer finished setting up

    def training_seconds(self, run_dir: Path) -> float:
        """Seconds of training so far: counted from when the trainer (re)wrote ``environment.json``, the
        last step of its set-up, so the budget never cuts a point before it could checkpoint."""
        if self.training_since is None:
            with contextlib.suppress(OSError):
                if (run_dir / "environment.json").stat().st_mtime >= self.wall_started:
                    self.training_since = time.monotonic()
        return 0.0 if self.training_since is None else time.monotonic() - self.training_since


def _log_iteration(run_dir: Path) -> int:
    """The last logged training iteration of a running point (read from the end of its log.jsonl)."""
    path = run_dir / "log.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            tail = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        with contextlib.suppress(ValueError):
            return int(json.loads(line).get("iter", 0))
    return 0


class SweepRunner:
    """Runs the pending points, ``jobs`` at a time, and keeps the manifest current."""

    def __init__(self, options: SweepOptions, points: list[Point], doc: dict[str, Any],
                 say: Callable[[str], None] = lambda message: print(message, file=sys.stderr)):
        self.options, self.points, self.doc, self.say = options, points, doc, say
        self.sweep_dir = Path(options.out)
        self.gpus = visible_gpus(options.device)
        self.running: list[_Running] = []
        self.interrupted_by: str | None = None  # "SIGINT" or "SIGTERM" once the sweep itself was interrupted

    def _record(self, point: Point, **extra: Any) -> None:
        for entry in self.doc["points"]:
            if entry["name"] == point.name:
                entry.update(status=point.status, reason=point.reason,
                             iteration=point.iteration, **extra)
        write_manifest(self.sweep_dir, self.doc)

    def _environment(self, gpu: str | None) -> dict[str, str]:
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif self.options.jobs > 1:  # split the CPU between the points running at once
            threads = str(max(1, usable_cores() // self.options.jobs))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return env

    def _start(self, point: Point) -> None:
        gpu = None
        if self.gpus:
            load = {g: sum(r.gpu == g for r in self.running) for g in self.gpus}
            gpu = min(self.gpus, key=lambda g: load[g])
        args = train_args(self.options, point, self.sweep_dir)
        log_path = self.sweep_dir / LOGS / f"{point.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")
        log.write(f"$ {shell_command(args)}\n")
        log.flush()
        process = subprocess.Popen([sys.executable, "-m", "srtool", *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=self._environment(gpu),
                                   preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        verb = "resuming" if point.status == "interrupted" else "starting"
        point.status, point.reason = "running", None
        self.running.append(_Running(point, process, log, time.monotonic(), gpu))
        self._record(point, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command=shell_command(args))
        self.say(f"{verb} {point.name}" + (f" on GPU {gpu}" if gpu is not None else "") + f" (log: {log_path})")

    def _finish(self, run: _Running, returncode: int, interrupted: bool) -> None:
        run.log.close()
        point = run.point
        point.iteration = _latest_iteration(self.sweep_dir / point.name)
        if returncode == 0 and point.iteration >= point.total:
            point.status, point.reason = "done", None
        elif returncode in (130, 143, -signal.SIGTERM) and run.budget_hit:
            point.status = "stopped"
            point.reason = f"time budget of {self.options.max_minutes:g} min reached at iteration {point.iteration}/{point.total}"
        elif returncode in (130, 143, -signal.SIGINT, -signal.SIGTERM) and interrupted:
            point.status, point.reason = "interrupted", None
        else:
            point.status = "failed"
            point.reason = failure_reason(self.sweep_dir / LOGS / f"{point.name}.log", returncode)
        self._record(point, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        word = {"done": "done", "stopped": "stopped", "failed": "FAILED", "interrupted": "interrupted"}[point.status]
        self.say(f"{word} {point.name}: iteration {point.iteration}/{point.total}" + (f" ({point.reason})" if point.reason else ""))

    def _poll(self, interrupted: bool) -> None:
        for run in list(self.running):
            code = run.process.poll()
            if code is None:
                limit = self.options.max_minutes
                if (limit is not None and not run.budget_hit
                        and run.training_seconds(self.sweep_dir / run.point.name) > limit * 60):
                    run.budget_hit = True
                    run.process.send_signal(signal.SIGTERM)  # the trainer checkpoints, exports and exits
                continue
            self.running.remove(run)
            self._finish(run, code, interrupted)

    def run(self, on_tick: Callable[[list[Point]], None] | None = None) -> bool:
        """Run every pending or interrupted point; False if the sweep itself was interrupted."""
        queue = [p for p in self.points if p.status in ("pending", "interrupted")]
        previous = signal.signal(signal.SIGTERM, raise_terminated) if _main_thread() else None
        try:
            while queue or self.running:
                while queue and len(self.running) < self.options.jobs:
                    self._start(queue.pop(0))
                time.sleep(0.2)
                self._poll(interrupted=False)
                if on_tick is not None:
                    on_tick([r.point for r in self.running])
            return True
        except KeyboardInterrupt as exc:
            self.interrupted_by = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            self.say("interrupted: the running points save a checkpoint, then stop; run the same command to continue")
            for run in self.running:
                with contextlib.suppress(ProcessLookupError):
                    run.process.send_signal(signal.SIGTERM)
            while self.running:
                time.sleep(0.2)
                self._poll(interrupted=True)
            return False
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def progress_counts(points: list[Point], sweep_dir: Path) -> tuple[int, int]:
    """(iterations done, iterations in all) over the points, for a progress bar with an ETA; a running
    point counts its last logged iteration, a finished one (even failed) its total."""
    done = 0
    for p in points:
        if p.status in FINISHED:
            done += p.total
        elif p.status == "running":
            done += max(p.iteration, _log_iteration(sweep_dir / p.name))
        else:
            done += p.iteration
    return done, sum(p.total for p in points)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ------------------------------------------------------------------------------------------ entry


@dataclass
class SweepResult:
    sweep_dir: Path
    points: list[Point]
    commands: list[str]
    completed: bool = True
    interrupted: str | None = None  # "SIGINT" or "SIGTERM" when not completed

    def count(self, status: str) -> int:
        return sum(p.status == status for p in self.points)


def prepare_sweep(options: SweepOptions) -> tuple[list[Point], dict[str, Any] | None]:
    """Plan, validate and reconcile with the disk: every error surfaces here, before any training."""
    if options.jobs < 1:
        raise UserError(f"--jobs {options.jobs}: must be at least 1")
    if options.max_minutes is not None and options.max_minutes <= 0:
        raise UserError(f"--max-minutes {options.max_minutes:g}: must be positive")
    options.out = sweep_dir = Path(options.out).expanduser()  # `--out=~/x`: bash leaves that ~ alone
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"--out {sweep_dir}: is a file, not a folder")
    if not options.data:
        raise UserError("give --data DIR (a prepared training set or a folder of HR images)")
    from .train.data import check_data_paths, check_distinct_data

    check_distinct_data(options.data)
    if options.device not in ("auto", "cpu"):  # as each point's `srtool train` would refuse it, before any runs
        from .train.engine import resolve_device

        resolve_device(options.device)
    options.data = [Path(p).expanduser().resolve() for p in options.data]
    check_data_paths(options.data)
    points = plan_points(options)
    from .prepare.paths import resolve_dataset

    for point in points:  # the validation sets every point will need
        for dataset in point.preset.validation.datasets:
            resolve_dataset(dataset, point.preset.scale)
    for dataset in options.evals:
        resolve_dataset(dataset, points[0].preset.scale)
    manifest = read_manifest(sweep_dir) if (sweep_dir / MANIFEST).exists() else None
    if manifest is None and sweep_dir.is_dir() and any(p.name not in (LOCK,) for p in sweep_dir.iterdir()):
        raise UserError(f"--out {sweep_dir}: folder is not empty and holds no sweep; choose a new folder")
    if options.init_from:
        for point in points:
            init_from_for(options.init_from, point)
    reconcile(points, sweep_dir, options.data, manifest, options.retry, options.init_from)
    return points, manifest


def run_sweep(options: SweepOptions, say: Callable[[str], None] | None = None,
              on_tick: Callable[[list[Point]], None] | None = None,
              on_plan: Callable[[list[Point]], None] | None = None) -> SweepResult:
    """Plan, validate, then train every point that is not finished (or print the commands: ``dry_run``)."""
    say = say or (lambda message: print(message, file=sys.stderr))
    options.out = sweep_dir = Path(options.out).expanduser()
    if options.dry_run:
        points, _ = prepare_sweep(options)
        for notice in replaced_overrides(options):
            say(notice)
        # printed to be run anywhere else: every path absolute (the data paths are already)
        commands = [shell_command(train_args(options, p, sweep_dir, anywhere=True)) for p in points
                    if p.status in ("pending", "interrupted")]
        return SweepResult(sweep_dir, points, commands)
    prepare_sweep(options)  # every error before the folder is even created
    for notice in replaced_overrides(options):
        say(notice)
    with sweep_lock(sweep_dir):
        points, manifest = prepare_sweep(options)  # again: another process may have changed it meanwhile
        doc = manifest_document(options, points, manifest)
        write_manifest(sweep_dir, doc)
        todo = sum(p.status in ("pending", "interrupted") for p in points)
        say(f"sweep {sweep_dir}: {len(points)} points, {todo} to run, {len(points) - todo} finished")
        if on_plan is not None:
            on_plan(points)
        runner = SweepRunner(options, points, doc, say)
        completed = runner.run(on_tick)
    return SweepResult(sweep_dir, points, [], completed, runner.interrupted_by)
