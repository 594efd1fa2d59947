"""Evaluation report (JSON + Markdown) and the training-curve PNG of a model version."""

from __future__ import annotations

from pathlib import Path

from training.train import History

TABLE_KEYS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "Recall@20", "HR@50", "MRR", "Coverage@10")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    models = report["models"]
    lines = [
        f"# Evaluation report: {report['dataset']}",
        "",
        f"Version `{report.get('version', '?')}`; selected model: **{report['selected']}** "
        "(chosen on validation NDCG@10).",
        f"{report['n_users']} users, {report['n_items']} items, {report['n_interactions']} "
        "interactions. Protocol: leave-one-out by time (last item = test, second-last = "
        "validation), full ranking over the whole catalog with the user's items excluded.",
        "Validation rows score the towers as early stopping kept them; test rows score the "
        f"served towers, trained {models[report['selected']].get('refit_epochs') or 0} more "
        "epoch(s) on train + validation, as the baselines are refit on both before test.",
        "",
        "## Test (full ranking)",
        "",
        "| model | valid NDCG@10 | " + " | ".join(TABLE_KEYS) + " | train s |",
        "|---" * (len(TABLE_KEYS) + 3) + "|",
    ]
    for name, m in models.items():
        row = [_fmt(m["valid"].get("NDCG@10", float("nan")))]
        row += [_fmt(m["test"].get(k, float("nan"))) for k in TABLE_KEYS]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {m.get('train_seconds', 0):.1f} |")
    skipped = report.get("skipped_baselines") or {}
    if skipped:
        lines += ["", "## Skipped baselines", ""]
        lines += [f"- **{name}**: not run, {reason}." for name, reason in skipped.items()]
    lines += [
        "",
        "## Sampled protocol (NCF-style: test item + 99 random unseen items)",
        "",
        "Only for comparison with older published numbers; it overstates quality.",
        "",
        "| model | HR@10 | NDCG@10 |",
        "|---|---|---|",
    ]
    for name, m in models.items():
        s = m.get("sampled100", {})
        lines.append(
            f"| {name} | {_fmt(s.get('HR@10', float('nan')))} | "
            f"{_fmt(s.get('NDCG@10', float('nan')))} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(histories: dict[str, History], path: Path) -> Path:
    """Loss and validation NDCG@10 per epoch, one line per trained encoder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ndcg) = plt.subplots(1, 2, figsize=(10, 4))
    for name, h in histories.items():
        ax_loss.plot(h.epoch, h.loss, label=name)
        ax_ndcg.plot(h.epoch, h.valid_ndcg10, label=name)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_ndcg.set(title="validation NDCG@10", xlabel="epoch", ylabel="NDCG@10")
    for ax in (ax_loss, ax_ndcg):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
