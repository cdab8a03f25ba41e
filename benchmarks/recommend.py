"""Recommendation accuracy: DGMRec against LightGCN and no-generation DGMRec on ML-100K (2/3 missing).

    python benchmarks/recommend.py --setting full --seeds 0 1 2 --threads 1
    python benchmarks/recommend.py --setting new-item --seeds 0 1 2 --threads 1
    python benchmarks/recommend.py --setting sparse --seeds 0 1 2 --threads 1
    python benchmarks/recommend.py --dataset sample-shop --setting full --seeds 0 1 2 --threads 1   # after make demo
    python benchmarks/recommend.py --merge part1.json part2.json   # one file from runs made apart
    python benchmarks/recommend.py --owed   # the runs the results still lack for issue 11's table
    ... --checkpoints runs/recommend   # resumable: a run cut short continues where it last validated

Every model trains under the one stopping rule of the config defaults (the paper's reference code:
validate every 3 epochs, stop after 26 validations without improvement, at most 500 epochs); test
metrics at the best validation epoch. Settings: ``full`` (the data's own split), ``new-item`` (the
paper's protocol: the items of ``new_items.npy`` get no training or validation interactions and are
scored on their test interactions only), ``sparse`` (a seeded 20% of each user's training
interactions, at least one; validation and test unchanged). The mask is the paper's protocol, as
shipped in the data's MMRec folder (missing_items_0.666.npy); seeds change initialisation and sampling.

Writes ``--out`` (default benchmarks/results/recommend.json): a list of records, one per run, with keys
``dataset``, ``setting``, ``model``, ``seed``, ``recall@20``, ``ndcg@20``, ``best_epoch``, ``epochs_run``,
the full validation curve ``curve`` ([epoch, valid Recall@20] pairs) and more; runs of other settings
already in the file are kept, a rerun of the same (dataset, setting, model, seed) replaces its record.
Then prints and writes (``recommend.md`` beside it) per (dataset, setting): mean ± std over seeds and
the paired per-seed differences against LightGCN and against no-generation; and draws
``validation_curves.png`` (LightGCN's and DGMRec's validation curves).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.data import Dataset  # noqa: E402
from dgmrec_core.distributed import resolve_device  # noqa: E402
from dgmrec_core.errors import DataError  # noqa: E402
from dgmrec_core.feature_rows import precision_name  # noqa: E402
from dgmrec_core.masking import make_new_item_split, make_sparse_split  # noqa: E402
from dgmrec_core.mmrec import load_mmrec  # noqa: E402
from dgmrec_core.stopping import trend_windows  # noqa: E402
from dgmrec_core.trainer import TrainResult, fit  # noqa: E402
from provenance import code_commit  # noqa: E402  (benchmarks/, the script's folder)
from validation_curves import plot_validation_curves  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODELS = {
    "dgmrec": {},
    # the published method, exactly
    "dgmrec-paper": {"generator": "paper", "untrained_items": "paper", "training_mode": "paper-exact"},
    "dgmrec-random-untrained": {"untrained_items": "paper"},  # the default but untrained items keep random IDs
    "dgmrec-observed-knn": {"knn_observed_only": True},
    "dgmrec-batch-local": {"training_mode": "batch-local"},  # batches compute only their rows, on any catalog
    "dgmrec-paper-exact": {"training_mode": "paper-exact"},  # the default's options with whole-catalog batches
    "dgmrec-batch-local-cached": {"training_mode": "batch-local", "cf_propagation": "cached"},  # and cached CF layers
    "dgmrec-anchors": {"nce_anchors": 256},  # the paper's InfoNCE terms on 256 sampled anchors (unbiased, cheaper)
    "dgmrec-batch-local-anchors": {"training_mode": "batch-local", "nce_anchors": 256},
    # the training batches' products with the raw feature rows in bfloat16 / float32 (the default, 'auto', picks
    # by hardware: every record names what it used, "feature_precision"), and with the InfoNCE products too
    "dgmrec-bf16-features": {"feature_precision": "bfloat16"},
    "dgmrec-float32-features": {"feature_precision": "float32"},
    "dgmrec-bf16": {"feature_precision": "bfloat16", "bf16_logits": True},
    "lightgcn": {"use_modalities": False},
    "no-generation": {"generation": False},
    "dgmrec-after": {"gen_training": "after"},  # the paper's training, the contrastive generator fitted after
    "dgmrec-light-chain": {"gen_weight": 0.1},  # the joint chain at a tenth of its weight
    "dgmrec-generator-chain": {"gen_chain_scope": "generator"},  # the chain loss trains the generator's parts only
    "dgmrec-gated": {"fusion": "gated"},  # modality parts let in by a learned scalar from 0
    "dgmrec-batch-local-gated": {"training_mode": "batch-local", "fusion": "gated"},
    "dgmrec-no-bm": {"align_bm": 0.0},  # diagnosis: without the behaviour-modality InfoNCE
    "dgmrec-no-intra": {"intra_modal": 0.0},  # diagnosis: without the user-item InfoNCE alignments
}
SETTINGS = {"full": "full", "new-item": "new-items", "sparse": "full"}  # --setting -> the record's setting
SPARSE_SHARE = 0.2
NEW_ITEM_SHARE = 0.2
LIGHTGCN_NEW_ITEMS = ("LightGCN has no content features, so it cannot score unseen items: its new-item figures "
                      "are those of the same evaluator on item ID embeddings that never had a training "
                      "interaction (left at their random initialisation: never drawn as negatives either)")
KEY = ("dataset", "setting", "model", "seed")
MISSING_RATIO = "0.666"  # the paper's mask, as shipped (missing_items_0.666.npy): --missing-ratio's default
# issue 11's table: every model in every (record dataset, record setting), 3 seeds each; with the command's
# --dataset and --setting that make each cell
GRID_MODELS = ("lightgcn", "dgmrec", "dgmrec-paper", "no-generation")
GRID_CELLS = {("ml100k", "full"): ("ml100k", "full"), ("ml100k", "new-items"): ("ml100k", "new-item"),
              ("ml100k-sparse", "full"): ("ml100k", "sparse"), ("sample-shop", "full"): ("sample-shop", "full"),
              ("sample-shop", "new-items"): ("sample-shop", "new-item"),
              ("sample-shop-sparse", "full"): ("sample-shop", "sparse")}
GRID_SEEDS = (0, 1, 2)


def load_base(data: Path, dataset: str, missing_ratio: str | None, new_items: bool) -> Dataset:
    """ML-100K from its MMRec folder (the paper's mask and new items), or the demo's sample shop (its own
    missing modalities; new items: a seeded 20% of its cold and of its warm items, as the paper chose them)."""
    if dataset == "ml100k":
        return load_mmrec(data, missing_ratio=missing_ratio, new_items=new_items)
    from generation import load_sample_shop  # benchmarks/: the shop as the generation benchmark reads it

    shop = load_sample_shop()
    if not new_items:
        return shop
    inter, new = make_new_item_split(shop.interactions, NEW_ITEM_SHARE, seed=0)
    return replace(shop, interactions=inter, new_items=new)


def load_setting(data: Path, dataset_name: str, setting: str, missing_ratio: str | None,
                 sparse_seed: int) -> tuple[Dataset, str]:
    """The dataset of ``setting`` and its name in the records (``<name>`` or ``<name>-sparse``)."""
    dataset = load_base(data, dataset_name, missing_ratio, setting == "new-item")
    if setting != "sparse":
        return dataset, dataset.name
    sparse = make_sparse_split(dataset.interactions, SPARSE_SHARE, seed=sparse_seed)
    return replace(dataset, interactions=sparse), f"{dataset.name}-sparse"


def checkpoint_path(folder: Path, name: str, setting: str, model: str, seed: int, epochs: int | None,
                    missing_ratio: str | None, sparse_seed: int) -> Path:
    """Where one run of ``--checkpoints`` saves and resumes: a file per run and every option that sets it."""
    parts = [name, setting, model, f"seed{seed}"]
    parts += [f"epochs{epochs}"] if epochs is not None else []
    parts += [f"missing{missing_ratio or 'none'}"] if missing_ratio != MISSING_RATIO else []
    parts += [f"sparse{sparse_seed}"] if name.endswith("-sparse") and sparse_seed else []
    return folder / ("-".join(parts) + ".pt")


def make_record(result: TrainResult, dataset: str, setting: str, model: str, seed: int, wall_s: float,
                dropped_unseen: int = 0) -> dict:
    """One run as a JSON-ready record; its headline metrics are the new-item ones in that setting."""
    headline = result.test_new_items if setting == "new-items" else result.test
    seconds = [h["seconds"] for h in result.history]
    record = {"dataset": dataset, "setting": setting, "model": model, "seed": seed,
              "recall@20": headline["recall@20"], "ndcg@20": headline["ndcg@20"], "recall@50": headline["recall@50"],
              "best_epoch": result.best_epoch, "epochs_run": len(result.history),
              "curve": [[h["epoch"], h["valid"]["recall@20"]] for h in result.history if "valid" in h],
              "test": result.test, "test_new_items": result.test_new_items, "valid": result.valid,
              "validation_problem": result.validation_problem, "dropped_unseen_rows": dropped_unseen,
              "sec_per_epoch": statistics.median(seconds) if seconds else 0.0, "wall_s": wall_s}
    if setting == "new-items" and model == "lightgcn":
        record["note"] = LIGHTGCN_NEW_ITEMS
    return record


def merge_records(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with the records of ``new`` added; a record of ``new`` replaces one with the same KEY."""
    merged = {tuple(r[k] for k in KEY): r for r in old}
    merged.update({tuple(r[k] for k in KEY): r for r in new})
    return list(merged.values())


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise SystemExit(f"{path}: expected a list of run records (older result files have another layout)")
    return records


def owed_runs(records: list[dict]) -> list[tuple[str, float | None]]:
    """The runs issue 11's table still lacks: (command, an estimate of its wall minutes), in the order of
    GRID_CELLS, GRID_MODELS and GRID_SEEDS. A run the stopping rule would now train on further (stopped by an
    earlier rule inside a climb: ``stopping_rule.replay``) is owed again. The estimate is the median wall time
    of the cell's recorded seeds, else of the setting's recorded DGMRec variants (any model but LightGCN), else
    None; runs resumed from a checkpoint (their wall time covers only their last part) and runs on a GPU are left
    out of it."""
    from stopping_rule import replay  # benchmarks/: replays a recorded curve under the current rule

    config = DGMRecConfig()
    owed = []
    for (dataset, setting), (flag_dataset, flag_setting) in GRID_CELLS.items():
        here = [r for r in records if (r["dataset"], r["setting"]) == (dataset, setting)]
        timed = [r for r in here if r.get("wall_s") and not r.get("resumed") and r.get("device", "cpu") == "cpu"]
        variants = [r["wall_s"] / 60 for r in timed if r["model"] != "lightgcn"]
        for model in GRID_MODELS:
            mine = [r for r in here if r["model"] == model]
            walls = [r["wall_s"] / 60 for r in timed if r["model"] == model] or variants
            minutes = statistics.median(walls) if walls else None
            early = {r["seed"] for r in mine if r.get("curve") and replay(r, config).verdict.startswith("goes on")}
            done = {r["seed"] for r in mine} - early
            for seed in GRID_SEEDS:
                if seed not in done:
                    why = "   (stopped early: run again)" if seed in early else ""
                    owed.append((f"python benchmarks/recommend.py --dataset {flag_dataset} --setting {flag_setting} "
                                 f"--models {model} --seeds {seed} --threads 1 --out part.json{why}", minutes))
    return owed


def print_owed(records: list[dict]) -> None:
    owed = owed_runs(records)
    known = [m for _, m in owed if m is not None]
    for command, minutes in owed:
        print(f"{command}   # {'time unknown' if minutes is None else f'about {minutes:.0f} min'}")
    print(f"{len(owed)} runs owed; {len(known)} of them estimated at {sum(known) / 60:.1f} hours in all (wall time "
          "of the recorded runs, one thread each, on a shared machine)")


def fmt(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def paired(records: list[dict], model: str, against: str) -> str | None:
    """Per-seed Recall@20 differences ``model`` - ``against`` on their common seeds, and their mean ± std."""
    a = {r["seed"]: r["recall@20"] for r in records if r["model"] == model}
    b = {r["seed"]: r["recall@20"] for r in records if r["model"] == against}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    mean = statistics.mean(diffs)
    verdict = ("n/a (one seed)" if len(diffs) < 2 else
               "yes" if abs(mean) > spread else "no")
    per_seed = ", ".join(f"{s}: {d:+.4f}" for s, d in zip(seeds, diffs))
    return f"| {model} - {against} | {per_seed} | {mean:+.4f} ± {spread:.4f} | {verdict} |"


def summary(records: list[dict]) -> str:
    """Markdown: per (dataset, setting), mean ± std per model and the paired per-seed differences."""
    lines = []
    for dataset, setting in sorted({(r["dataset"], r["setting"]) for r in records}):
        group = [r for r in records if (r["dataset"], r["setting"]) == (dataset, setting)]
        models = sorted({r["model"] for r in group}, key=lambda m: list(MODELS).index(m) if m in MODELS else 99)
        lines += [f"### {dataset}, {setting}", "",
                  "| model | Recall@20 | NDCG@20 | Recall@50 | best epoch (per seed) | epochs run | seeds |",
                  "|---|---|---|---|---|---|---|"]
        for m in models:
            rs = sorted((r for r in group if r["model"] == m), key=lambda r: r["seed"])
            lines.append(f"| {m} | {fmt([r['recall@20'] for r in rs])} | {fmt([r['ndcg@20'] for r in rs])} | "
                         f"{fmt([r['recall@50'] for r in rs])} | {', '.join(str(r['best_epoch']) for r in rs)} | "
                         f"{', '.join(str(r['epochs_run']) for r in rs)} | {len(rs)} |")
        rows = [paired(group, m, base) for base in ("lightgcn", "no-generation") for m in models
                if m not in (base, "lightgcn")]
        rows = [row for row in rows if row]
        if rows:
            lines += ["", "Paired per seed (Recall@20 difference; 'beyond noise': |mean| > std of the differences):",
                      "", "| pair | per seed | mean ± std | beyond noise |", "|---|---|---|---|", *rows]
        notes = sorted({r["note"] for r in group if r.get("note")} |
                       {f"{r['model']} seed {r['seed']}: {r['validation_problem']}" for r in group
                        if r.get("validation_problem")})
        lines += ["", *(f"Note: {n}." for n in notes), ""] if notes else [""]
    return "\n".join(lines)


def finish(records: list[dict], out: Path) -> None:
    """Write ``out``, its markdown summary and the validation-curve plot; print the summary."""
    atomic_write_text(out, json.dumps(records, indent=1))
    text = summary(records)
    atomic_write_text(out.with_suffix(".md"), text + "\n")
    if out.name == "recommend.json":  # the section-1 plot: LightGCN's and DGMRec's curves
        png = plot_validation_curves(records, out.parent / "validation_curves.png")
    else:
        png = plot_validation_curves(records, out.parent / f"{out.stem}_curves.png", models=tuple(MODELS))
    print("\n" + text)
    print(f"wrote {out}, {out.with_suffix('.md')}, {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens100k-posters/mmrec")
    parser.add_argument("--dataset", choices=["ml100k", "sample-shop"], default="ml100k",
                        help="ml100k: --data's MMRec folder; sample-shop: the demo's shop (make demo builds it)")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="epoch cap (default: the config's, the shared stopping rule; "
                                                   "smoke runs only)")
    parser.add_argument("--models", nargs="+", default=["lightgcn", "dgmrec", "no-generation"], choices=sorted(MODELS))
    parser.add_argument("--missing-ratio", default=MISSING_RATIO,
                        help="mask file missing_items_<ratio>.npy; 'none': every modality observed (what the "
                             "modality branch can add at best)")
    parser.add_argument("--sparse-seed", type=int, default=0, help="seed of the sparse setting's subsample")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where every run trains; "
                                                        "recorded with each run")
    parser.add_argument("--out", type=Path, default=RESULTS / "recommend.json")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="add the records of these result files (e.g. from parallel processes) to --out, "
                             "write the summary and plot; trains nothing")
    parser.add_argument("--checkpoints", type=Path,
                        help="folder of one checkpoint per run (saved at every validation); a run whose checkpoint "
                             "is there resumes from it, so a run cut short loses at most 3 epochs and the same "
                             "command finishes it (a finished run's checkpoint gives its record again without "
                             "training). Each holds the model: ML-100K about 47 MB")
    parser.add_argument("--owed", action="store_true",
                        help="list the runs --out still lacks for issue 11's table (lightgcn, dgmrec, "
                             "dgmrec-paper, no-generation; 3 seeds in every dataset and setting); trains nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # a line per validation
    records = read_records(args.out)
    if args.owed:
        print_owed(records)
        return
    if args.merge:
        for path in args.merge:
            records = merge_records(records, read_records(path))
        finish(records, args.out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    ratio = None if args.missing_ratio.lower() == "none" else args.missing_ratio
    dataset, name = load_setting(args.data, args.dataset, args.setting, ratio, args.sparse_seed)
    setting = SETTINGS[args.setting]
    inter = dataset.interactions
    print(f"{name}, {setting}: {inter.n_users} users, {inter.n_items} items, {len(inter.train)} train interactions "
          f"(density {len(inter.train) / (inter.n_users * inter.n_items):.3%}), {len(inter.valid)} valid, "
          f"{len(inter.test)} test", flush=True)
    if setting == "new-items" and "lightgcn" in args.models:
        print(f"note: {LIGHTGCN_NEW_ITEMS}.", flush=True)
    commit = code_commit()  # the code the runs use, in every record
    base = DGMRecConfig() if args.epochs is None else replace(DGMRecConfig(), epochs=args.epochs)
    if args.checkpoints is not None:
        args.checkpoints.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for model in args.models:
            t0 = time.perf_counter()
            ckpt = None
            if args.checkpoints is not None:
                ckpt = checkpoint_path(args.checkpoints, name, setting, model, seed, args.epochs, ratio,
                                       args.sparse_seed)
            resumed = ckpt is not None and ckpt.exists()
            if resumed:
                print(f"{model:>20} seed {seed}: resuming from {ckpt}", flush=True)
            try:
                result = fit(dataset, replace(base, seed=seed, **MODELS[model]), progress=False, checkpoint=ckpt,
                             resume=resumed, device=args.device)
            except DataError as exc:
                raise SystemExit(str(exc)) from None
            record = make_record(result, name, setting, model, seed, time.perf_counter() - t0,
                                 inter.dropped_unseen)
            record["commit"] = commit
            record["device"] = str(resolve_device(args.device))  # as train_speed.py names it; absent: the CPU
            record["stop_rising_sigmas"] = base.stop_rising_sigmas  # absent: the reference rule alone (0)
            record["stop_trend_windows"] = list(trend_windows(base.patience))  # absent: [patience] (2004a63)
            config = replace(base, **MODELS[model])  # absent: float32 (before 'auto', the only precision)
            record["feature_precision"] = precision_name(config.feature_precision, resolve_device(args.device))
            if resumed:
                record["resumed"] = True  # wall_s is this invocation's part only
            records = merge_records(records, [record])
            print(f"{model:>20} seed {seed}: recall@20 {record['recall@20']:.4f} ndcg@20 {record['ndcg@20']:.4f} "
                  f"best epoch {result.best_epoch}/{len(result.history)} {record['sec_per_epoch']:.2f} s/epoch",
                  flush=True)
            # after every run, so a stopped benchmark keeps what it measured
            atomic_write_text(args.out, json.dumps(records, indent=1))
    finish(records, args.out)


if __name__ == "__main__":
    main()
