"""Model quality on MovieLens-100K: every tower variant and baseline, one run, one split.

    python -m bench.quality [--data-dir ../shared/data/ml-100k] [--encoders sasrec,gru]
                            [--members 1,2]

Each variant (encoder × ensemble size) is trained by the product's own command
(``python -m training train``) in a child process, so its wall time and peak memory are
its own; the baselines and the features-only / sequence-only modes come from the same
run's eval report. The "best tower" of the verdict is chosen on validation NDCG@10, like
every other choice. Prints a table and writes the ``## Quality`` section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench._common import ROOT, machine, write_section
from training.pipeline import RunConfig

REFERENCE = {"popularity": (0.086, 0.045), "ease": (0.149, 0.072), "markov": (0.145, 0.079)}
COLUMNS = ("HR@10", "NDCG@10", "HR@20", "Recall@20", "Coverage@10")


def variant_name(encoder: str, members: int) -> str:
    return encoder if members == 1 else f"{encoder} ×{members}"


def train(encoder: str, members: int, data_dir: Path, out: Path, threads: int, reuse: bool) -> dict:
    """Train one encoder in a child process; return its report, wall time and peak RSS.
    ``reuse`` reads a report an earlier run left in ``out`` instead of training again."""
    report_path = out / "current" / "eval_report.json"
    if reuse and report_path.is_file():
        report = json.loads(report_path.read_text())
        return {
            "report": report,
            "wall_s": None,
            "peak_mb": report["peak_memory_mb"],
            "encoder": encoder,
        }
    cmd = [
        sys.executable,
        "-m",
        "training",
        "train",
        "--dataset",
        "ml-100k",
        "--data-dir",
        str(data_dir),
        "--encoder",
        encoder,
        "--members",
        str(members),
        "--out",
        str(out),
        "--threads",
        str(threads),
        "--no-progress",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    report = json.loads(report_path.read_text())
    return {
        "report": report,
        "wall_s": wall,
        "peak_mb": report["peak_memory_mb"],
        "encoder": encoder,
    }


def rows(runs: dict[str, dict]) -> list[tuple[str, dict, float | None, float | None]]:
    """(name, test metrics, train seconds, peak MB of the whole training process):
    variants, their single-branch modes, baselines."""
    out = []
    first = next(iter(runs.values()))["report"]["models"]
    for name, run in runs.items():
        models, tower = run["report"]["models"], tower_entry(run)
        out.append((name, tower["test"], tower["train_seconds"], run["peak_mb"]))
        for mode in ("features-only", "sequence-only"):
            if mode in models:
                out.append((f"{name} {mode}", models[mode]["test"], None, None))
    for name in ("popularity", "item-knn", "ease", "markov"):
        out.append((name, first[name]["test"], first[name]["fit_seconds"], None))
    return out


def table(rows_: list) -> str:
    lines = [
        "| model | " + " | ".join(COLUMNS) + " | train s | peak MB |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for name, test, seconds, peak in rows_:
        cells = [f"{test[c]:.4f}" for c in COLUMNS]
        cells += [
            f"{seconds:.0f}" if seconds is not None else "",
            f"{peak:.0f}" if peak is not None else "",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tower_entry(run: dict) -> dict:
    return run["report"]["models"][run["encoder"]]


def verdict(runs: dict[str, dict]) -> list[str]:
    first = next(iter(runs.values()))["report"]["models"]
    best = max(runs, key=lambda name: tower_entry(runs[name])["valid"]["NDCG@10"])
    towers = {name: tower_entry(run)["test"] for name, run in runs.items()}
    base = max(
        ("popularity", "item-knn", "ease", "markov"), key=lambda b: first[b]["test"]["NDCG@10"]
    )
    hr, ndcg = towers[best]["HR@10"], towers[best]["NDCG@10"]
    ratio = ndcg / first[base]["test"]["NDCG@10"]
    slowest = max(tower_entry(r)["train_seconds"] for r in runs.values())
    feats = runs[best]["report"]["models"].get("features-only", {}).get("test", {}).get("NDCG@10")
    pop = first["popularity"]["test"]["NDCG@10"]

    def ok(flag: bool) -> str:
        return "met" if flag else "NOT met"

    return [
        f"- best tower on validation NDCG@10, `{best}`: test HR@10 {hr:.4f} "
        f"(target ≥ 0.22: {ok(hr >= 0.22)}), NDCG@10 {ndcg:.4f} "
        f"(target ≥ 0.11: {ok(ndcg >= 0.11)})",
        f"- {ratio:.2f}× the best baseline's NDCG@10 (`{base}`, "
        f"{first[base]['test']['NDCG@10']:.4f}; target ≥ 1.3×: {ok(ratio >= 1.3)})",
        f"- slowest tower training {slowest / 60:.1f} min (target ≤ 10 min: {ok(slowest <= 600)})",
        f"- `{best}` features-only beats popularity: {ok(feats is not None and feats > pop)} "
        f"(NDCG@10 {feats if feats is None else round(feats, 4)} vs {pop:.4f})",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    p.add_argument("--encoders", default="sasrec,gru")
    p.add_argument(
        "--members",
        default=str(RunConfig().members),
        help="ensemble sizes to train for each encoder, e.g. 1,2 (default: the product's)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="report the bundles a previous run left in --out instead of training",
    )
    args = p.parse_args(argv)
    command = "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    runs = {
        variant_name(e, m): train(
            e, m, args.data_dir, args.out / f"{e}-{m}", args.threads, args.reuse
        )
        for e in args.encoders.split(",")
        for m in map(int, args.members.split(","))
    }
    text = table(rows(runs))
    print(text)
    checks = verdict(runs)
    print("\n".join(checks))
    if args.no_write:
        return
    reference = ", ".join(f"{k} {hr:.3f} / {nd:.3f}" for k, (hr, nd) in REFERENCE.items())
    write_section(
        "Quality",
        "\n".join(
            [
                "## Quality",
                "",
                f"Command: `{command.strip()}`  ",
                f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
                f"Machine: {machine()}",
                "",
                "MovieLens-100K, all 100,000 ratings as implicit feedback "
                "(943 users, 1,682 items), "
                "leave-one-out by time (ties in file order), full ranking over all items with the "
                "user's items excluded; test split, reported once. Each tower is trained by "
                "`python -m training train` with default settings and `--members N` (early "
                "stopping on validation NDCG@10; `×N` = an ensemble of N towers trained with "
                "seeds 0..N-1, served as one model); features-only / sequence-only are the "
                "same model with one branch given. "
                f"Reference points on this protocol (HR@10 / NDCG@10): {reference}.",
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
