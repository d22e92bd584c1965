"""The report's figures: every bar and point with its 95% interval, methods grouped by family."""

from __future__ import annotations

import io
from pathlib import Path

from data.io import atomic_write_bytes
from jobs.evaluation.intervals import Estimate


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_pass_at_1(rates: dict[tuple[str, str], Estimate | None], families: dict[str, str], path: Path) -> None:
    """Grouped bars of pass@1 with 95% error bars: one group per dataset inside each method, methods
    ordered by family (``families``: method -> family, in the order to draw) and labelled with it."""
    plt = _pyplot()
    methods = [m for m in families if any(pair[0] == m for pair in rates)]
    methods += [m for m in dict.fromkeys(m for m, _ in rates) if m not in methods]
    datasets = sorted({ds for _, ds in rates})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) * max(1, len(datasets))), 3.8))
    width = 0.8 / max(1, len(datasets))
    for j, ds in enumerate(datasets):
        labelled = False
        for i, m in enumerate(methods):
            if (m, ds) not in rates:
                continue
            est = rates[(m, ds)]
            x = i + j * width
            v = est.value if est else 0.0
            ax.bar(x, v, width=width, color=f"C{j}", label=None if labelled else ds)
            labelled = True
            if est:
                ax.errorbar(x, v, yerr=[[v - est.low], [est.high - v]], fmt="none", ecolor="black", capsize=2, lw=0.8)
            ax.text(x, (est.high if est else 0.0) + 0.02, "n/a" if est is None else f"{v:.2f}", ha="center",
                    fontsize=6)
    ax.set_xticks([i + width * (len(datasets) - 1) / 2 for i in range(len(methods))], methods, rotation=30,
                  ha="right", fontsize=7)
    previous = None
    for i, m in enumerate(methods):  # a family's name above its first method, a rule between families
        family = families.get(m, "other")
        if family != previous:
            if i:
                ax.axvline(i - 0.5 + width * (len(datasets) - 1) / 2, color="grey", lw=0.5, ls=":")
            ax.text(i - 0.4, 1.12, family, fontsize=7, color="dimgrey")
            previous = family
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("pass@1 (95% CI)")
    ax.set_title("pass@1 per method, grouped by family", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)


def _points(ax, points, scale: float, xlabel: str, ylabel: str, title: str) -> None:
    for m, y, x in points:
        ax.errorbar(x.value * scale, y.value * scale, xerr=[[(x.value - x.low) * scale], [(x.high - x.value) * scale]],
                    yerr=[[(y.value - y.low) * scale], [(y.high - y.value) * scale]], fmt="o", capsize=3)
        ax.annotate(m, (x.value * scale, y.value * scale), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_update_vs_forgetting(by_pass: list, by_nll: list, update: str, forget: str, path: Path) -> None:
    """Two panels, one point per method with both 95% intervals, against the base model: Δ pass@1 on
    ``update`` against Δ pass@1 on ``forget``; and, for the methods with a likelihood scorecard, the
    same by NLL (x: Δ NLL of ``forget``'s reference solutions, > 0 = forgetting; y: -Δ NLL of the
    new code on ``update``, > 0 = learned). The second panel moves where pass@1 sits at its floor."""
    plt = _pyplot()
    panels = [p for p in (by_pass, by_nll) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    k = 0
    if by_pass:
        _points(axes[0][k], by_pass, 100.0, f"Δ pass@1 on {forget} (points; < 0 = forgetting)",
                f"Δ pass@1 on {update} (points)", "by pass@1")
        k += 1
    if by_nll:
        flipped = [(m, Estimate(-y.value, -y.high, -y.low, y.n), x) for m, y, x in by_nll]
        _points(axes[0][k], flipped, 1.0, f"Δ NLL of {forget}'s solutions (nats/token; > 0 = forgetting)",
                f"-Δ NLL of the new code on {update} (nats/token; > 0 = learned)", "by likelihood (scorecard)")
    fig.suptitle("update success against forgetting, vs the base model", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
