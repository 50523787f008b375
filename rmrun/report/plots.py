"""The figures of ``rmrun report``, drawn with matplotlib's Agg backend (no display needed).

Each function takes what :mod:`rmrun.report.data` read and returns a figure, or None when
there is nothing to draw. Curves over steps mark epoch ends (grey dotted lines) and resumes
(red dashed lines at the step training took up from).
"""

from __future__ import annotations

import numpy as np

RESUME_COLOR = "#d62728"
CHOSEN_COLOR, REJECTED_COLOR = "#1f77b4", "#ff7f0e"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark(ax, record, *, label: bool) -> None:
    """Epoch ends and resumes on a step axis."""
    for i, step in enumerate(record.epoch_ends):
        ax.axvline(
            step + 0.5, color="grey", linestyle=":", linewidth=1, label="epoch end" if label and i == 0 else None
        )
    for i, resume in enumerate(record.resumes):
        ax.axvline(
            resume.step, color=RESUME_COLOR, linestyle="--", linewidth=1.2, label="resume" if label and i == 0 else None
        )
        if label:
            ax.annotate(
                f"resume @{resume.step}",
                (resume.step, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                color=RESUME_COLOR,
                fontsize=8,
            )


def _curve(ax, steps, values, title: str, **style) -> None:
    ax.plot(steps, values, **style)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def training_curves(record):
    """Loss, accuracy, margin, learning rate, rewards and gradient norm per optimizer step."""
    if not record.metrics:
        return None
    plt = pyplot()
    steps = [m["step"] for m in record.metrics]

    def series(key):
        return [m.get(key) if m.get(key) is not None else np.nan for m in record.metrics]

    fig, axes = plt.subplots(3, 2, figsize=(11, 9), constrained_layout=True)
    panels = [
        ("loss", "training loss"),
        ("accuracy", "training accuracy"),
        ("margin", "margin (r_chosen - r_rejected)"),
        ("lr", "learning rate"),
        (None, "mean reward"),
        ("grad_norm", "gradient norm (before clipping)"),
    ]
    for (key, title), ax in zip(panels, axes.flat):
        if key is None:
            _curve(ax, steps, series("chosen_reward"), title, color=CHOSEN_COLOR, label="chosen")
            ax.plot(steps, series("rejected_reward"), color=REJECTED_COLOR, label="rejected")
        else:
            _curve(ax, steps, series(key), title, color="black", linewidth=1)
        _mark(ax, record, label=ax is axes.flat[0] or key is None)
        if key is None or ax is axes.flat[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{record.name}: training, per optimizer step", fontsize=12)
    return fig


def throughput(record):
    """Pairs and tokens per second between consecutive commits."""
    if not record.throughput:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    steps = [p["step"] for p in record.throughput]
    for ax, key, title in ((axes[0], "pairs_per_second", "pairs / s"), (axes[1], "tokens_per_second", "tokens / s")):
        _curve(ax, steps, [p[key] for p in record.throughput], title, marker="o", color="#2ca02c")
        ax.set_ylim(bottom=0)
        _mark(ax, record, label=ax is axes[0])
    axes[0].legend(fontsize=8)
    fig.suptitle("throughput between checkpoints (wall clock, evaluation and checkpoint time included)", fontsize=11)
    return fig


def eval_curves(record):
    """Evaluation loss, accuracy (with the longer-wins baseline) and margin over steps."""
    if not record.evals:
        return None
    plt = pyplot()
    steps = [e["step"] for e in record.evals]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    _curve(axes[0], steps, [e["loss"] for e in record.evals], "eval loss", marker="o", color="black")
    _curve(
        axes[1], steps, [e["accuracy"] for e in record.evals], "eval accuracy", marker="o", color="black", label="model"
    )
    baseline = [e.get("longer_wins_accuracy") for e in record.evals]
    if baseline[-1] is not None:
        axes[1].axhline(baseline[-1], color="purple", linestyle="-.", label="longer response wins")
    axes[1].set_ylim(-0.02, 1.02)
    _curve(axes[2], steps, [e["margin"] for e in record.evals], "eval margin", marker="o", color="black")
    for ax in axes:
        _mark(ax, record, label=ax is axes[1])
    axes[1].legend(fontsize=8)
    fig.suptitle("evaluation during training", fontsize=11)
    return fig


def reward_histograms(scored):
    """Chosen and rejected rewards of the eval pairs, and their margins."""
    if scored is None:
        return None
    plt = pyplot()
    chosen, rejected = scored.rewards[:, 0], scored.rewards[:, 1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    bins = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=min(40, max(10, len(chosen) // 4)))
    axes[0].hist(chosen, bins=bins, alpha=0.6, color=CHOSEN_COLOR, label=f"chosen (mean {chosen.mean():.3f})")
    axes[0].hist(rejected, bins=bins, alpha=0.6, color=REJECTED_COLOR, label=f"rejected (mean {rejected.mean():.3f})")
    axes[0].set_title("rewards of the eval pairs", fontsize=10)
    axes[0].legend(fontsize=8)
    margins = chosen - rejected
    axes[1].hist(margins, bins=min(40, max(10, len(margins) // 4)), color="grey")
    axes[1].axvline(0, color="black", linewidth=1)
    axes[1].set_title(f"r_chosen - r_rejected ({(margins > 0).mean():.1%} > 0)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("reward", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    return fig


def length_buckets(model_buckets: list[dict], baseline_buckets: list[dict] | None):
    """Accuracy per length bucket (longer side, tokens), against the longer-response-wins baseline."""
    if not model_buckets:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8), constrained_layout=True)

    def label(b):
        return f"[{b['min_tokens']}, {b['max_tokens'] if b['max_tokens'] is not None else '∞'})\n{b['pairs']} pairs"

    x = np.arange(len(model_buckets))
    ax.bar(x - 0.2, [b["accuracy"] for b in model_buckets], width=0.4, color="black", label="model")
    if baseline_buckets:
        by_start = {b["min_tokens"]: b["accuracy"] for b in baseline_buckets}
        ax.bar(
            x + 0.2,
            [by_start.get(b["min_tokens"], np.nan) for b in model_buckets],
            width=0.4,
            color="purple",
            alpha=0.7,
            label="longer response wins",
        )
    ax.set_xticks(x, [label(b) for b in model_buckets], fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylabel("accuracy", fontsize=9)
    ax.set_title("final evaluation: accuracy by length of the longer response (tokens)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    return fig


def calibration_curve(scored):
    """Reliability diagram of sigmoid(r_chosen - r_rejected), each pair counted both ways."""
    if scored is None or not scored.calibration["calibration"]:
        return None
    plt = pyplot()
    table = scored.calibration["calibration"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True, gridspec_kw={"width_ratios": [1.2, 1]})
    confidence = [b["confidence"] for b in table]
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    axes[0].plot(confidence, [b["accuracy"] for b in table], marker="o", color="black", label="model")
    axes[0].set_xlim(0, 1), axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_xlabel("predicted P(preferred) = sigmoid(margin)", fontsize=8)
    axes[0].set_ylabel("observed frequency", fontsize=8)
    axes[0].set_title(
        f"calibration: ECE {scored.calibration['ece']:.3f}, Brier {scored.calibration['brier']:.3f}", fontsize=10
    )
    axes[0].legend(fontsize=8)
    axes[1].bar([(b["low"] + b["high"]) / 2 for b in table], [b["count"] for b in table], width=0.09, color="grey")
    axes[1].set_xlim(0, 1)
    axes[1].set_title("responses per confidence bin", fontsize=10)
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    return fig


def save(fig, path: str) -> None:
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
