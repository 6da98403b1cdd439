"""One picture for router and cascade: accuracy against relative cost, every strategy on it."""

from __future__ import annotations

from pathlib import Path

from pipeline.routing.metrics import upper_hull


def curves_picture(path: Path, title: str, rungs: dict[str, tuple[float, float]],
                   curves: dict[str, list[tuple[float, float]]], marks: dict[str, tuple[float, float]],
                   cost_label: str, bands: dict[str, list[dict]] | None = None) -> None:
    """`bands`: per curve name, one {lo, hi} per point of that curve (in its given order): drawn as
    the curve's 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    hull = upper_hull(list(rungs.values()))
    ax.plot(*zip(*hull), "--", color="grey", label="hull of single rungs (zero router)")
    for name, (c, a) in rungs.items():
        ax.scatter(c, a, color="grey", s=30, zorder=3)
        ax.annotate(name, (c, a), textcoords="offset points", xytext=(4, -10), fontsize=7, color="dimgrey")
    for name, pts in curves.items():
        if bands and name in bands:
            rows = sorted(zip(pts, bands[name]))
            line = ax.plot([p[0] for p, _ in rows], [p[1] for p, _ in rows], "-", lw=1.4, label=name)
            ax.fill_between([p[0] for p, _ in rows], [b["lo"] for _, b in rows], [b["hi"] for _, b in rows],
                            color=line[0].get_color(), alpha=0.15, lw=0, label=f"{name}, 95% interval")
            continue
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", lw=1.4, label=name)
    markers = iter("*DPXov^s")
    for name, (c, a) in marks.items():
        ax.scatter(c, a, s=110, marker=next(markers), zorder=4, label=f"{name} ({c:.2f}, {a:.3f})")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("accuracy on the test split")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
