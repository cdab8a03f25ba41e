"""Which recorded runs the stopping rule's trend test changes (issue 11; docs/DESIGN.md, "Stopping rule").

Replays every run's recorded validation curve (benchmarks/results/recommend.json, or --records) under the
reference rule (stop after 26 validations without a better Recall@20) and under the default, which also waits
while the last 26 validations still climb (``stop_rising_sigmas``). A run the default stops where the reference
rule did keeps its record; one the default would train on must be run again.

    python benchmarks/stopping_rule.py   # results/stopping_rule.{json,png}, results/recommend_stopped_early.json

The records of runs the default would train on further (stopped by the reference rule, or by the trend test's
first version, commit 2004a63, which read the whole patience only) are kept in ``recommend_stopped_early.json``
(added to, never pruned), so that a rerun merged into recommend.json does not erase the figure it replaces; the
plot sets each such curve beside its rerun.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.stopping import rise_in_sigmas, should_stop, trend_windows  # noqa: E402
from provenance import code_commit  # noqa: E402  (benchmarks/, the script's folder)

RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("stopping_rule")


@dataclass
class Replay:
    """One recorded run replayed under both rules."""

    dataset: str
    setting: str
    model: str
    seed: int
    epochs_run: int
    reference_stop: int | None  # epoch the reference rule stops at on this curve (None: it runs to the end)
    default_stop: int | None  # likewise under the default rule; None where the curve ends first
    rise_at_reference_stop: float  # the trend test's statistic where the reference rule stops (its larger window)
    ran_under: float  # the run's own stop_rising_sigmas (0: the reference rule; records before it: 0)
    reproduced: bool  # the rule it ran under stops this curve where the run stopped (or it ran to the cap)
    verdict: str  # "same"; "goes on: run again" (a run the default rule would train on further); "went on"
    # (a default-rule run that the reference rule would have stopped earlier); "capped" (the epoch cap ended it)


def stop_epoch(curve: list[tuple[int, float]], patience: int, rising_sigmas: float,
               windows: list[int] | None = None) -> int | None:
    """The epoch at which the rule stops on ``curve`` (the trainer's strict-improvement bookkeeping), or None."""
    best, stale, scores = float("-inf"), 0, []
    for epoch, score in curve:
        scores.append(score)
        if score > best:
            best, stale = score, 0
        else:
            stale += 1
        if should_stop(stale, patience, scores, rising_sigmas, windows):
            return epoch
    return None


def own_windows(record: dict, patience: int) -> list[int]:
    """The trend test's spans the run was made with: recorded since they were; before that (commit 2004a63) the
    whole patience only."""
    return record.get("stop_trend_windows", [patience])


def replay(record: dict, config: DGMRecConfig) -> Replay:
    curve = [(int(e), float(v)) for e, v in record.get("curve") or []]
    ref = stop_epoch(curve, config.patience, 0.0)
    new = stop_epoch(curve, config.patience, config.stop_rising_sigmas)
    upto = [v for e, v in curve if ref is None or e <= ref]
    rise = max(rise_in_sigmas(upto[-w:]) for w in trend_windows(config.patience))
    ran_under = float(record.get("stop_rising_sigmas", 0.0))
    epochs_run = int(record["epochs_run"])
    own = stop_epoch(curve, config.patience, ran_under, own_windows(record, config.patience))
    capped = epochs_run >= config.epochs
    reproduced = own == epochs_run or (own is None and capped)
    if ref is None:
        verdict = "capped" if capped else "curve ends before either rule stops"
    elif new == ref:
        verdict = "same"
    elif new == epochs_run:
        verdict = "went on"  # a run of the default rule that the reference rule would have stopped at ref
    else:
        verdict = "goes on: run again"  # stopped by the reference rule or an earlier trend test
    return Replay(record["dataset"], record["setting"], record["model"], int(record["seed"]), epochs_run,
                  ref, new, round(rise, 2), ran_under, reproduced, verdict)


def keep_reference_records(changed: list[dict], path: Path) -> list[dict]:
    """``path``'s records with ``changed`` added (``recommend.merge_records``: same KEY replaced); written back,
    sorted by KEY; the merged list."""
    from recommend import KEY, merge_records, read_records  # benchmarks/: the records' own key and merge

    merged = sorted(merge_records(read_records(path), changed), key=lambda r: tuple(str(r[k]) for k in KEY))
    atomic_write_text(path, json.dumps(merged, indent=1) + "\n")
    return merged


def plot_reruns(reference: list[dict], records: list[dict], out: Path) -> Path:
    """One panel per run stopped early: its first curve, and its rerun's (default rule) where there is one."""
    import matplotlib.pyplot as plt
    from recommend import KEY
    from validation_curves import label_curve_axis, save_figure  # benchmarks/: sets the Agg backend

    reruns = {tuple(r[k] for k in KEY): r for r in records if r.get("stop_trend_windows")}
    cols = min(3, max(1, len(reference)))
    rows = -(-max(1, len(reference)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, old in zip(axes.flat, reference):
        for run, colour, label in ((old, "tab:gray", "first run"),
                                   (reruns.get(tuple(old[k] for k in KEY)), "tab:blue", "rerun, default rule")):
            if run is None:
                continue
            epochs, values = zip(*run["curve"])
            ax.plot(epochs, values, color=colour, linewidth=1,
                    label=f"{label}: test {run['recall@20']:.3f}, best epoch {run['best_epoch']}")
            ax.axvline(run["epochs_run"], color=colour, linestyle=":", linewidth=1)
        label_curve_axis(ax, f"{old['dataset']}, {old['setting']}, {old['model']}, seed {old['seed']}", small=True)
    for ax in list(axes.flat)[len(reference):]:
        ax.axis("off")
    return save_figure(fig, out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, nargs="+", default=[RESULTS / "recommend.json"])
    parser.add_argument("--out", type=Path, default=RESULTS / "stopping_rule.json")
    parser.add_argument("--reference-records", type=Path, default=RESULTS / "recommend_stopped_early.json",
                        help="where the records of runs the default would train on further are kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = DGMRecConfig()
    records = [r for path in args.records for r in json.loads(path.read_text())]
    with_curves = [r for r in records if r.get("curve")]
    replays = [replay(r, config) for r in with_curves]
    stopped_early = [rec for rec, r in zip(with_curves, replays) if r.verdict == "goes on: run again"]
    reference = keep_reference_records(stopped_early, args.reference_records)
    png = plot_reruns(reference, records, args.out.with_suffix(".png"))
    mismatched = [r for r in replays if not r.reproduced]
    for r in replays:
        log.info("%-14s %-9s %-24s seed %d  ran %3d  reference stops %4s  default %4s  rise %6.2f  %s", r.dataset,
                 r.setting, r.model, r.seed, r.epochs_run, r.reference_stop, r.default_stop,
                 r.rise_at_reference_stop, r.verdict)
    log.info("%d runs replayed: %d the default rule would train on further; %d whose recorded length their own "
             "rule does not reproduce", len(replays), len(stopped_early), len(mismatched))
    payload = {"commit": code_commit(), "patience": config.patience,
               "stop_rising_sigmas": config.stop_rising_sigmas, "runs": [asdict(r) for r in replays]}
    atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    log.info("wrote %s, %s, %s", args.out, png, args.reference_records)


if __name__ == "__main__":
    main()
