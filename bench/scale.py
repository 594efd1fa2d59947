"""Cost of the whole default training run as the data grows.

    python -m bench.scale [--only 100k,1m,5m,20m,cat-2k,cat-20k,cat-200k,ml-100k,...]
                          [--timeout 600] [--deadline 07:55] [--steps 5]
                          [--no-probe | --no-run] [--no-write]

Every scenario runs the product's own command, ``python -m training train`` with its
defaults (only ``--dataset``, ``--data-dir`` and ``--out`` given), in a child process,
and records the load time, wall time per epoch (one pass of the loop: the training
steps plus that epoch's validation, from the progress bar), the epochs made, the total
wall time and the child's peak RSS (``wait4``; ``VmHWM`` while it runs), next to the
out-of-memory estimate the run printed before it started. Before it, a probe (a child
process: the same loading, split and default Trainer, in-process) times a few training
steps and one validation pass and projects the CPU time of an epoch, the number that
stays comparable when a big log's first epoch does not end within the timeout.

Scenarios: the project's synthetic generator written as a generic CSV (``dataset.toml``
+ tables, user and item features included) at 100k, 1M, 5M and 20M interactions with
ML-20M's catalog and history length (26,744 items, ~145 interactions a user; 138,493
users at 20M, fewer below), so that cost per interaction is comparable along the row;
catalogs of 2k, 20k and 200k items at 1M interactions (6,900 users); and the shared
real sets (ml-100k, amazon-beauty, amazon-sports). A run that passes ``--timeout`` (or
the ``--deadline``) is stopped and recorded as partial: whatever it reached (load time,
epochs, peak RSS so far) rather than nothing. Results accumulate in
``--work/results.json`` across invocations, so sizes can be run one at a time; the
table of all recorded rows is printed and written to docs/BENCHMARKS.md "Scale".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench._common import ROOT, machine, write_section

SHARED = ROOT.parent / "shared" / "data"
ML20M_ITEMS, PER_USER = 26_744, 145  # ML-20M: 20,000,263 ratings by 138,493 users


@dataclass
class Scenario:
    name: str
    kind: str  # synthetic | shared
    users: int = 0
    items: int = 0
    interactions: int = 0  # target; the generator's random lengths give about this many
    path: str = ""  # shared: directory under ../shared/data

    def generator_args(self) -> dict:
        mean = self.interactions / self.users
        low = 20
        return {
            "n_users": self.users,
            "n_items": self.items,
            "min_length": low,
            "max_length": int(round(2 * mean - low)),
            "seed": 0,
        }


def _synthetic(name: str, interactions: int, items: int, users: int | None = None) -> Scenario:
    users = users or round(interactions / PER_USER)
    return Scenario(name, "synthetic", users=users, items=items, interactions=interactions)


SCENARIOS = {
    s.name: s
    for s in (
        _synthetic("100k", 100_000, ML20M_ITEMS),
        _synthetic("1m", 1_000_000, ML20M_ITEMS),
        _synthetic("5m", 5_000_000, ML20M_ITEMS),
        _synthetic("20m", 20_000_263, ML20M_ITEMS, users=138_493),
        _synthetic("cat-2k", 1_000_000, 2_000),
        _synthetic("cat-20k", 1_000_000, 20_000),
        _synthetic("cat-200k", 1_000_000, 200_000),
        Scenario("ml-100k", "shared", path="ml-100k"),
        Scenario("amazon-beauty", "shared", path="amazon-beauty"),
        Scenario("amazon-sports", "shared", path="amazon-sports"),
    )
}
SERIES = ("100k", "1m", "5m", "20m")
CATALOGS = ("cat-2k", "cat-20k", "cat-200k")


def prepare(s: Scenario, work: Path) -> tuple[list[str], float | None]:
    """The dataset arguments of the command, generating and writing a synthetic log
    once (cached in ``work``); returns (args, seconds spent generating or None)."""
    if s.kind == "shared":
        dataset = "ml-100k" if s.path == "ml-100k" else "generic"
        return ["--dataset", dataset, "--data-dir", str(SHARED / s.path)], None
    from training.data.generic import write_generic
    from training.data.synthetic import generate

    root = work / "data" / s.name
    stamp = root / "generator.json"
    args = s.generator_args()
    if not (stamp.is_file() and json.loads(stamp.read_text()) == args):
        start = time.perf_counter()
        print(f"[{s.name}] generating {args} ...", flush=True)
        write_generic(generate(**args), root)
        stamp.write_text(json.dumps(args))
        return ["--dataset", "generic", "--data-dir", str(root)], time.perf_counter() - start
    return ["--dataset", "generic", "--data-dir", str(root)], None


def peak_so_far_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a running process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """CPU seconds per wall second of the child between two of its wall times."""
    inside = [(t, c) for t, c in samples if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def run(s: Scenario, work: Path, timeout: float, threads: int | None, bench: str) -> dict:
    """One default training run of ``s``; the row of measurements (partial on timeout)."""
    data_args, generate_s = prepare(s, work)
    out = work / "out" / s.name
    log_path = work / "logs" / f"{s.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "training", "train", *data_args, "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"[{s.name}] {' '.join(cmd)}  (timeout {timeout:.0f} s, log {log_path})", flush=True)
    started, start = datetime.now(), time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    status, peak, rusage, samples = "timeout", None, None, []
    while True:
        pid, code, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            status, rusage = ("done" if code == 0 else f"failed ({code >> 8})"), usage
            break
        peak = peak_so_far_mb(child.pid) or peak
        cpu = cpu_seconds(child.pid)
        if cpu is not None:
            samples.append((time.perf_counter() - start, cpu))
        if time.perf_counter() - start > timeout:
            os.kill(child.pid, signal.SIGTERM)
            _, _, rusage = os.wait4(child.pid, 0)
            break
        time.sleep(2)
    child.returncode = 0  # reaped by wait4 above
    wall = time.perf_counter() - start
    row = {
        "scenario": s.name,
        "status": status,
        "date": started.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m training train", *data_args, "--out", "OUT"]),
        "bench_command": bench,
        "wall_s": wall,
        "generate_s": generate_s,
        "peak_rss_mb": rusage.ru_maxrss / 1024 if rusage else peak,
        "cpu_s": (rusage.ru_utime + rusage.ru_stime) if rusage else None,
    }
    row |= parse_log(log_path.read_text(errors="replace"), started)
    if row.get("epoch_s") and "load_s" in row:
        # the contended machine gives the child only part of its cores: CPU time per
        # epoch (wall per epoch x the child's CPU share while training) travels better
        end = row["load_s"] + row["towers_s"] if row.get("towers_s") else wall
        share = cpu_share(samples, row["load_s"], end)
        row["epoch_cpu_s"] = row["epoch_s"] * share if share else None
    report = out / "current" / "eval_report.json"
    if status == "done" and report.is_file():
        r = json.loads(report.read_text())
        selected = r["models"][r["selected"]]
        row |= {
            "epochs": sum(selected.get("epochs", [])) or row.get("epochs"),
            "towers_s": selected.get("train_seconds"),
            "baselines_s": sum(
                m.get("fit_seconds", 0) for m in r["models"].values() if "fit_seconds" in m
            ),
            "skipped": sorted(r.get("skipped_baselines", {})),
            "test_ndcg10": selected["test"]["NDCG@10"],
        }
    return row


def probe(s: Scenario, work: Path, steps: int) -> dict:
    """In this process: load ``s`` and build the default run exactly as the trainer
    does, then time ``steps`` training steps (after one warm-up step) and one
    validation pass. For logs whose first epoch does not end within the timeout, this
    projects the CPU time of an epoch: steps per epoch x CPU per step + validation."""
    import torch

    from training.model import TwoTower
    from training.pipeline import Run, RunConfig, load
    from training.train import Trainer

    data_args, _ = prepare(s, work)
    cfg = RunConfig(dataset=data_args[1], data_dir=data_args[3])
    torch.set_num_threads(cfg.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    ds = load(cfg, fallback=False)
    run_ = Run(ds, cfg)
    row = {
        "probe_load_s": time.perf_counter() - wall,
        "probe_load_cpu_s": time.process_time() - cpu,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": int(len(ds.users)),
    }
    torch.manual_seed(cfg.train.seed)
    model = TwoTower(run_.tower_config(cfg.encoders[0]))
    train_cfg = run_.cfg.train  # the derived settings (training.defaults), as the trainer runs
    trainer = Trainer(model, run_.split, run_.item_feats, run_.user_feats, train_cfg)
    batch = train_cfg.batch_size
    trainer.train_epoch(trainer.train_users[:batch])  # warm-up
    users = trainer.train_users[: steps * batch]
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train_epoch(users)
    n_steps = _steps(trainer, users, batch)
    row |= {
        "step_s": (time.perf_counter() - wall) / n_steps,
        "step_cpu_s": (time.process_time() - cpu) / n_steps,
    }
    wall, cpu = time.perf_counter(), time.process_time()
    run_.valid_metrics(trainer.evaluated)
    row |= {"valid_s": time.perf_counter() - wall, "valid_cpu_s": time.process_time() - cpu}
    row["steps_per_epoch"] = _steps(trainer, trainer.train_users, batch)
    row["projected_epoch_cpu_s"] = row["steps_per_epoch"] * row["step_cpu_s"] + row["valid_cpu_s"]
    return row


def _steps(trainer, users, batch: int) -> int:
    """Training steps of one epoch over ``users``: an epoch covers every window of every
    history (training.train), so long histories make several rows each."""
    return math.ceil(len(trainer.batcher.windows(users)[0]) / batch)


def run_probe(s: Scenario, work: Path, steps: int, timeout: float) -> dict:
    """``probe`` in a child process, so that its peak RSS and CPU are its own."""
    prepare(s, work)
    cmd = [sys.executable, "-m", "bench.scale", "--probe", s.name, "--steps", str(steps)]
    cmd += ["--work", str(work)]
    print(f"[{s.name}] probe: {' '.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        result = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return {"probe": "timeout"}
    if result.returncode != 0:
        return {"probe": f"failed: {result.stderr.strip().splitlines()[-1:]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


PROBE_KEYS = {
    "probe", "probe_load_s", "probe_load_cpu_s", "step_s", "step_cpu_s", "valid_s",
    "valid_cpu_s", "steps_per_epoch", "projected_epoch_cpu_s",
}  # fmt: skip
LINE_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "


def _seconds_since(stamp: str, started: datetime) -> float:
    return (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") - started).total_seconds()


def parse_log(text: str, started: datetime) -> dict:
    """What the run's log says: shape, load time, estimate, epochs and seconds per epoch
    (from the progress bars: one bar per member, its elapsed time over its epochs)."""
    row: dict = {}
    loaded = re.search(
        LINE_TIME + r"training.pipeline loaded .*?: (\d+) users, (\d+) items, (\d+) interactions",
        text,
        re.M,
    )
    if loaded:
        row["load_s"] = _seconds_since(loaded.group(1), started)
        row |= dict(
            zip(("users", "items", "interactions"), map(int, loaded.groups()[1:]), strict=True)
        )
    estimate = re.search(r"memory estimate: peak ~([\d.]+) GiB", text)
    if estimate:
        row["estimate_mb"] = float(estimate.group(1)) * 1024
    bars, last = [], None
    for line in re.split(r"[\r\n]", text):
        m = re.search(r"train:.*?\b(\d+)/\d+ \[(?:(\d+):)?(\d+):(\d+)<", line)
        if not m:
            continue
        done = int(m.group(1))
        elapsed = int(m.group(2) or 0) * 3600 + int(m.group(3)) * 60 + int(m.group(4))
        if last is None or done < last[0]:
            bars.append([0, 0.0])
        bars[-1] = [done, elapsed]
        last = (done, elapsed)
    epochs = sum(b[0] for b in bars)
    if epochs:
        row["epochs"] = epochs
        row["epoch_s"] = sum(b[1] for b in bars if b[0]) / epochs
    trained = re.search(LINE_TIME + r"training.pipeline \S+: valid NDCG@10", text, re.M)
    if trained and "load_s" in row:
        row["towers_s"] = _seconds_since(trained.group(1), started) - row["load_s"]
    return row


def _fmt(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float | int) else str(value)


COLUMNS = (
    ("scenario", "scenario", None),
    ("users", "users", 0),
    ("items", "items", 0),
    ("interactions", "interactions", 0),
    ("load_s", "load s", 0),
    ("epoch_s", "s / epoch", 1),
    ("epoch_cpu_s", "CPU s / epoch", 1),
    ("epochs", "epochs", 0),
    ("step_cpu_s", "probe CPU s / step", 2),
    ("projected_epoch_cpu_s", "probe CPU s / epoch", 0),
    ("towers_s", "towers s", 0),
    ("baselines_s", "baselines s", 0),
    ("wall_s", "total s", 0),
    ("cpu_s", "CPU s", 0),
    ("peak_rss_mb", "peak RSS MB", 0),
    ("estimate_mb", "estimate MB", 0),
    ("status", "status", None),
)


def table(rows: list[dict]) -> str:
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---" * len(COLUMNS) + "|",
    ]
    for row in rows:
        cells = [_fmt(row.get(key), digits) if digits is not None else str(row.get(key, ""))
                 for key, _, digits in COLUMNS]  # fmt: skip
        if row.get("status") == "timeout":
            cells[-1] = f"partial: stopped at {row['wall_s'] / 60:.0f} min"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def exponent(rows: list[dict], x: str, y: str) -> tuple[float, str, str] | None:
    """Log-log slope of ``y`` against ``x`` between the smallest and the largest rows
    that have both (1 = linear, 0 = constant)."""
    have = [r for r in rows if r.get(x) and r.get(y)]
    if len(have) < 2:
        return None
    lo, hi = min(have, key=lambda r: r[x]), max(have, key=lambda r: r[x])
    if lo[x] == hi[x]:
        return None
    return math.log(hi[y] / lo[y]) / math.log(hi[x] / lo[x]), lo["scenario"], hi["scenario"]


def growth(rows: dict[str, dict]) -> list[str]:
    """One sentence per cost: how it grows along the interaction and catalog series."""
    out = []
    for series, x, what in ((SERIES, "interactions", "interactions"), (CATALOGS, "items", "items")):
        part = [rows[n] for n in series if n in rows]
        for y, label in (("epoch_cpu_s", "CPU seconds per epoch"),
                         ("projected_epoch_cpu_s", "probe CPU seconds per epoch"),
                         ("step_cpu_s", "probe CPU seconds per step"),
                         ("load_s", "load time"), ("peak_rss_mb", "peak RSS")):  # fmt: skip
            if y == "load_s" and x == "items":
                continue
            fit = exponent(part, x, y)
            if fit is None:
                out.append(f"- {label} against {what}: not enough measured rows yet.")
                continue
            slope, lo, hi = fit
            verdict = (
                "constant" if abs(slope) < 0.2
                else "sub-linear" if slope < 0.8
                else "linear" if slope <= 1.2
                else "super-linear"
            )  # fmt: skip
            fixed = y in ("load_s", "peak_rss_mb") and slope < 0.8
            out.append(
                f"- {label} against {what} ({lo} → {hi}): exponent {slope:.2f}, {verdict}"
                + (
                    " (dominated by fixed costs: start-up, libraries, step buffers)"
                    if fixed
                    else ""
                )
                + "."
            )
    return out


def section(rows: dict[str, dict]) -> str:
    ordered = [rows[n] for n in SCENARIOS if n in rows]
    dates = sorted({r["date"] for r in ordered})
    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r["bench_command"] for r in ordered))
    return "\n".join(
        [
            "## Scale",
            "",
            f"Commands: {commands} (each row: `python -m training train --dataset ... "
            "--data-dir ... --out OUT` with every other option at its default, in a child "
            "process). Machine: " + machine() + f". Dates: {', '.join(dates)}.",
            "",
            "Synthetic rows are the project's generator written as a generic CSV with user and "
            f"item features: the interaction series keeps ML-20M's catalog ({ML20M_ITEMS:,} "
            f"items) and ~{PER_USER} interactions a user and grows the users (138,493 at 20M); "
            "the catalog series holds 1M interactions (6,897 users) and grows the catalog. "
            "`s / epoch` is one pass of the training loop including that epoch's validation "
            "(progress bar elapsed time over epochs, all members); `CPU s / epoch` is that "
            "times the child's CPU share while it trained (the machine is shared: compare "
            "CPU, not wall). `probe CPU s / step` and `probe CPU s / epoch` come from a "
            "separate child that builds the same default run and times 5 steps after a "
            "warm-up and one validation pass (epoch = steps per epoch x CPU per step + "
            "validation), so every size gets a per-epoch cost even when its first real epoch "
            "did not end before the timeout. `epochs` counts every "
            "member's epochs; `estimate MB` is the out-of-memory estimate the run printed before "
            "it started (training/memory.py). A partial row was stopped at the time shown: its "
            "numbers are what it reached by then (peak RSS so far; `–` = not reached). The "
            "defaults measured are those of this branch at the date shown; the training "
            "defaults (epochs, members, loss) are being changed by the quality work "
            "concurrently, so rerun this after merging.",
            "",
            table(ordered),
            "",
            "How each cost grows (log-log slope between the smallest and largest measured row):",
            "",
            *growth(rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma list of scenarios")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--deadline", help="HH:MM UTC: stop any run at this time")
    parser.add_argument("--work", type=Path, default=Path("/tmp/towerrec-scale"))
    parser.add_argument("--threads", type=int, help="torch threads (default: the trainer's)")
    parser.add_argument("--no-write", action="store_true", help="don't touch docs/BENCHMARKS.md")
    parser.add_argument("--steps", type=int, default=5, help="training steps the probe times")
    parser.add_argument("--no-probe", action="store_true", help="only the full default runs")
    parser.add_argument("--no-run", action="store_true", help="only the probes")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: the probe's child
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(SCENARIOS[args.probe], args.work, args.steps)))
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    results_path = args.work / "results.json"
    args.work.mkdir(parents=True, exist_ok=True)
    rows = json.loads(results_path.read_text()) if results_path.is_file() else {}
    command = "python -m bench.scale " + " ".join(sys.argv[1:])
    for name in names:
        timeout = args.timeout
        if args.deadline:
            now = datetime.now(UTC)
            hour, minute = map(int, args.deadline.split(":"))
            end = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            timeout = min(timeout, (end - now).total_seconds())
            if timeout < 60:
                print(f"[{name}] skipped: deadline {args.deadline} UTC", flush=True)
                continue
        # a row holds the latest probe and the latest full run of its scenario
        old = rows.get(name, {})
        if args.no_probe:
            row = {k: v for k, v in old.items() if k in PROBE_KEYS}
        else:
            row = run_probe(SCENARIOS[name], args.work, args.steps, timeout)
        if args.no_run:
            row = {k: v for k, v in old.items() if k not in PROBE_KEYS} | row
            row.setdefault("scenario", name)
            row.setdefault("bench_command", command)
            row.setdefault("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
            row.setdefault("status", row.get("probe") or "probe only")
        else:
            row |= run(SCENARIOS[name], args.work, timeout, args.threads, command)
        # re-read: another invocation may have added rows meanwhile
        rows = json.loads(results_path.read_text()) if results_path.is_file() else {}
        rows[name] = row
        results_path.write_text(json.dumps(rows, indent=1))
        print(table([rows[name]]), flush=True)
        if not args.no_write:
            write_section("Scale", section(rows))
    print(table([rows[n] for n in SCENARIOS if n in rows]))
    print("\n".join(growth(rows)))


if __name__ == "__main__":
    main()
