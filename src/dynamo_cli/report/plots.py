"""Learning curves drawn to PNG with matplotlib's Agg backend (files only, never a window)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dynamo_cli.report.curves import X_AXES, Curve
from dynamo_cli.report.labels import n_seeds
from dynamo_cli.runtime import atomic

CURVE_STYLES = (('-', 'o'), ('--', 's'), (':', '^'))  # (line style, marker) per 10 curves


def plot_curves(curves: Sequence[Curve], *, x: str, metric: str, path: Path, title: str) -> Path:
    """One line per method (mean over seeds) with a shaded min–max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(curves) > 6  # the legend moves beside the axes, the bands fade
    fig, ax = plt.subplots(figsize=(8.4 if many else 6.4, 4.2), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(curves):  # past the 10 colours, a new line style and marker: no two methods look alike
        style, marker = CURVE_STYLES[i // len(colors) % len(CURVE_STYLES)]
        line, = ax.plot(curve.x, curve.mean, marker=marker, markersize=3, linestyle=style, color=colors[i % len(colors)],
                        label=f"{curve.method} ({n_seeds(curve.seeds)})")
        ax.fill_between(curve.x, curve.low, curve.high, color=line.get_color(), alpha=0.08 if many else 0.18, linewidth=0)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{title}\nline: mean over seeds; band: min–max over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(path, fig.savefig)  # the temporary name keeps the suffix, which picks the format
    plt.close(fig)
    return path
