"""Model quality on every shared dataset: the default tower and the baselines, one table.

    python -m bench.quality [--datasets ml-100k,amazon-beauty,amazon-sports] [--jobs 1]
                            [--train-args "--members 1 --epochs 5"] [--reuse] [--no-write]

Each dataset is trained by the product's own command with its defaults (``python -m
training train``; the settings derived from the data's shape are in the bundle), in a
child process, so its wall time, CPU time and peak memory are its own. The baselines
come from the same run's eval report, on the same split. ``--jobs N`` trains N datasets
at once (their wall times then include sharing the cores; CPU time does not).
``--train-args`` passes extra options to every training command (side runs). Prints a
table and writes the ``## Quality`` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench._common import ROOT, machine, write_section
from bench._common import SHARED_DATA as DATA

DATASETS = ("ml-100k", "amazon-beauty", "amazon-sports")
MODES = ("features-only", "sequence-only")
# the targets: test HR@10 / NDCG@10 floors and minutes of wall time
FLOORS = {
    "ml-100k": (0.22, 0.11),
    "amazon-beauty": (0.0928, 0.0523),
    "amazon-sports": (0.056, 0.0323),
}
WALL_MIN = {"ml-100k": 10, "amazon-beauty": 20, "amazon-sports": 30}
RATIO, PEAK_MB = 1.3, 2048


def command(name: str, out: Path, threads: int, extra: list[str]) -> list[str]:
    data = ["--dataset", "ml-100k"] if name == "ml-100k" else ["--dataset", "generic"]
    return [
        *(sys.executable, "-m", "training", "train", *data),
        *("--data-dir", str(DATA / name), "--out", str(out), "--threads", str(threads)),
        "--no-progress",
        *extra,
    ]


def train(name: str, out: Path, threads: int, extra: list[str], reuse: bool) -> dict:
    """Train ``name`` in a child process: its report, wall / CPU seconds and peak MB.
    ``reuse`` reads the report an earlier run left in ``out`` instead."""
    report_path = out / "current" / "eval_report.json"
    timing = out / "timing.json"
    if not (reuse and report_path.is_file() and timing.is_file()):
        cmd = command(name, out, threads, extra)
        log = out.with_suffix(".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with log.open("w") as f:
            child = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            raise SystemExit(f"{name}: training failed (status {status}); see {log}")
        wall = time.perf_counter() - start
        timing.write_text(
            json.dumps(
                {
                    "wall_s": wall,
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                    "peak_mb": usage.ru_maxrss / 1024,
                    "command": shlex.join(["python", *cmd[1:]]),
                }
            )
        )
    return {"report": json.loads(report_path.read_text()), **json.loads(timing.read_text())}


def baselines(models: dict) -> list[str]:
    return [
        k
        for k, v in models.items()
        if k not in MODES and isinstance(v, dict) and "test" in v and "train_seconds" not in v
    ]


def summary(name: str, run: dict) -> dict:
    report = run["report"]
    models, selected = report["models"], report["selected"]
    base = max(baselines(models), key=lambda b: models[b]["test"]["NDCG@10"])
    tower = models[selected]
    return {
        "dataset": name,
        "selected": selected,
        "tower": tower,
        "base": base,
        "ratio": tower["test"]["NDCG@10"] / models[base]["test"]["NDCG@10"],
        **{k: run[k] for k in ("wall_s", "cpu_s", "peak_mb", "command")},
    }


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "" if x is None else format(x, spec)


def epochs(tower: dict) -> str:
    """Each member's early-stopped epochs, plus the refit epochs on train + validation."""
    trained = ",".join(map(str, tower["epochs"]))
    return f"{trained} + {tower['refit_epochs']}" if tower.get("refit_epochs") else trained


def table(runs: dict[str, dict]) -> str:
    head = (
        "| dataset | model | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 "
        "| × best baseline | epochs | train min | wall min | CPU min | peak MB |"
    )
    lines = [head, "|---" * 12 + "|"]
    for name, run in runs.items():
        s, models = summary(name, run), run["report"]["models"]
        best = models[s["base"]]["test"]["NDCG@10"]
        entries = [(s["selected"], models[s["selected"]])]
        entries += [(f"{s['selected']} {m}", models[m]) for m in MODES if m in models]
        entries += [(b, models[b]) for b in baselines(models)]
        for label, m in entries:
            tower = label == s["selected"]
            seconds = m.get("train_seconds", m.get("fit_seconds"))
            cells = [
                name,
                f"**{label}**" if tower else label,
                *(fmt(m[stage][k]) for stage in ("valid", "test") for k in ("HR@10", "NDCG@10")),
                f"{m['test']['NDCG@10'] / best:.2f}",
                epochs(m) if tower else "",
                fmt(seconds / 60 if seconds is not None else None, ".1f"),
                fmt(s["wall_s"] / 60, ".1f") if tower else "",
                fmt(s["cpu_s"] / 60, ".1f") if tower else "",
                fmt(s["peak_mb"], ".0f") if tower else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(runs: dict[str, dict]) -> list[str]:
    def ok(flag: bool) -> str:
        return "met" if flag else "**NOT met**"

    out = []
    for name, run in runs.items():
        s = summary(name, run)
        test = s["tower"]["test"]
        line = (
            f"- {name}: `{s['selected']}` test NDCG@10 {test['NDCG@10']:.4f} = "
            f"{s['ratio']:.2f}× `{s['base']}` (≥ {RATIO}×: {ok(s['ratio'] >= RATIO)})"
        )
        if name in FLOORS:
            hr, ndcg = FLOORS[name]
            good = test["HR@10"] >= hr and test["NDCG@10"] >= ndcg
            line += f"; HR@10 {test['HR@10']:.4f} / NDCG@10 ≥ {hr} / {ndcg}: {ok(good)}"
        if name in WALL_MIN:
            minutes = s["wall_s"] / 60
            line += (
                f"; wall {minutes:.1f} min (≤ {WALL_MIN[name]}: {ok(minutes <= WALL_MIN[name])}"
                f", CPU {s['cpu_s'] / 60:.1f} min)"
            )
        line += f"; peak {s['peak_mb']:.0f} MB (≤ {PEAK_MB}: {ok(s['peak_mb'] <= PEAK_MB)})"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--jobs", type=int, default=1, help="datasets trained at once")
    p.add_argument("--threads", type=int, default=2, help="torch threads per training")
    p.add_argument("--train-args", default="", help="extra options for every training run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    p.add_argument("--reuse", action="store_true", help="report the runs left in --out")
    args = p.parse_args(argv)
    cmdline = "python -m bench.quality " + shlex.join(argv if argv is not None else sys.argv[1:])
    names, extra = args.datasets.split(","), shlex.split(args.train_args)
    started = datetime.now(UTC)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            n: pool.submit(train, n, args.out / n, args.threads, extra, args.reuse) for n in names
        }
        runs = {n: f.result() for n, f in futures.items()}
    text, checks = table(runs), verdict(runs)
    print(text, "\n".join(checks), sep="\n")
    if args.no_write:
        return
    commands = "\n".join(f"  - `{summary(n, r)['command']}`" for n, r in runs.items())
    derived = "\n".join(
        f"  - {n}: {json.dumps(r['report'].get('derived', {}))}"
        + "".join(
            f"; baseline `{b}` skipped: {why}"
            for b, why in r["report"].get("skipped_baselines", {}).items()
        )
        for n, r in runs.items()
    )
    write_section(
        "Quality",
        "\n".join(
            [
                "## Quality",
                "",
                f"Command: `{cmdline.strip()}`  ",
                f"Date: {started:%Y-%m-%d %H:%M} UTC  ",
                f"Machine: {machine()} (when writing; a shared machine: wall times "
                "include other jobs' load, CPU time does not)",
                "",
                "Each dataset's training command (the defaults plus any `--train-args`):",
                "",
                commands,
                "",
                "Settings derived from each data set's shape (training/defaults.py), and "
                "baselines the memory budget skipped (training/memory.py):",
                "",
                derived,
                "",
                "Leave-one-out by time (the last item is the test target, the one before "
                "it validation), full ranking over every item with the user's earlier "
                "items excluded; validation picks every setting, test is reported once. "
                "Validation rows score the towers as early stopping kept them; test "
                "rows score the served towers, trained the `+ N` refit epochs more on "
                "train + validation, as every baseline is refit on both before test. "
                "The tower row is the served model; `× best baseline` is test NDCG@10 "
                "over the best baseline's in the same run; `train min` is the towers' "
                "training (baselines: fitting), `wall` / `CPU min` the whole command.",
                "",
                text,
                "",
                "Targets:",
                "",
                *checks,
            ]
        ),
    )
    print("wrote the ## Quality section of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
