"""Plot LightGCN's and DGMRec's validation Recall@20 against epoch from benchmarks/results/recommend.json.

    python benchmarks/validation_curves.py [--results benchmarks/results/recommend.json] [--out PNG]
                                           [--models lightgcn dgmrec]

One panel per (dataset, setting) in the results; one line per seed, a dot at each run's best epoch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmrec_core.atomic import atomic_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COLOURS = {"lightgcn": "tab:gray", "dgmrec": "tab:blue", "dgmrec-batch-local": "tab:orange",
           "dgmrec-bf16-features": "tab:red"}


def plot_validation_curves(records: list[dict], out: Path, models: tuple[str, ...] = ("lightgcn", "dgmrec")) -> Path:
    """Write ``out`` (PNG): valid Recall@20 per validated epoch of every run of ``models``."""
    groups = sorted({(r["dataset"], r["setting"]) for r in records if r["model"] in models and r.get("curve")})
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5.5 * max(1, len(groups)), 3.8), squeeze=False)
    for ax, (dataset, setting) in zip(axes[0], groups):
        labelled: set[str] = set()
        for r in records:
            if (r["dataset"], r["setting"]) != (dataset, setting) or r["model"] not in models or not r.get("curve"):
                continue
            epochs, values = zip(*r["curve"])
            colour = COLOURS.get(r["model"])
            ax.plot(epochs, values, color=colour, linewidth=1,
                    label=None if r["model"] in labelled else r["model"])
            labelled.add(r["model"])
            best = dict(r["curve"]).get(r["best_epoch"])
            if best is not None:
                ax.plot([r["best_epoch"]], [best], "o", color=colour, markersize=4)
        label_curve_axis(ax, f"{dataset}, {setting}")
    if not groups:
        axes[0][0].text(0.5, 0.5, "no validation curves", ha="center")
    return save_figure(fig, out, dpi=110)


def label_curve_axis(ax, title: str, small: bool = False) -> None:
    """Title, axis labels, grid and legend of a validation-curve panel."""
    ax.set_title(title, fontsize=9 if small else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid Recall@20")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if small else None)


def save_figure(fig, out: Path, dpi: int) -> Path:
    """Write ``fig`` to ``out`` (PNG) atomically and close it."""
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS / "recommend.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "validation_curves.png")
    parser.add_argument("--models", nargs="+", default=["lightgcn", "dgmrec"], help="the models whose runs are drawn")
    args = parser.parse_args()
    print(plot_validation_curves(json.loads(args.results.read_text()), args.out, tuple(args.models)))


if __name__ == "__main__":
    main()
