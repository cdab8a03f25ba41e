"""`dgmrec train`, `dgmrec evaluate`, `dgmrec make-mask`: the model side of the command line.

torch and the data modules are imported by the commands that run, not here: `dgmrec --help` stays quick.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dgmrec_core.atomic import atomic_write_text, own_folder_problem
from dgmrec_core.config import HELP, DGMRecConfig
from dgmrec_core.errors import DataError

if TYPE_CHECKING:
    from dgmrec_core.data import Dataset

BASELINES = {"lightgcn": {"use_modalities": False}, "no-generation": {"generation": False}}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for every DGMRecConfig field, plus --config FILE and --baseline."""
    group = parser.add_argument_group("model and training (defaults: the paper's Amazon Baby config)")
    group.add_argument("--config", type=Path, help="JSON file of options; flags given here override it")
    group.add_argument("--baseline", choices=sorted(BASELINES),
                       help="train a baseline instead: 'lightgcn' (no modalities) or 'no-generation' "
                            "(DGMRec with missing features left mean-imputed)")
    for f in fields(DGMRecConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{HELP[f.name]} (default {f.default})")
        else:
            group.add_argument(flag, type=type(f.default), default=None, metavar=type(f.default).__name__.upper(),
                               help=f"{HELP[f.name]} (default {f.default})")


def config_from_args(args: argparse.Namespace) -> DGMRecConfig:
    """Defaults, then --config, then --baseline, then explicit flags."""
    config = DGMRecConfig.from_file(args.config) if args.config else DGMRecConfig()
    if args.baseline:
        config = replace(config, **BASELINES[args.baseline])
    given = {f.name: getattr(args, f.name) for f in fields(DGMRecConfig) if getattr(args, f.name) is not None}
    return replace(config, **given)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (an MMRec folder, or an interactions file plus feature files)")
    group.add_argument("--mmrec", type=Path, help="MMRec folder: <name>.inter, image_feat.npy, text_feat.npy, ...")
    group.add_argument("--missing-ratio", default="0.666",
                       help="with --mmrec: apply missing_items_<RATIO>.npy; 'none' for no mask (default 0.666)")
    group.add_argument("--new-items", action="store_true",
                       help="with --mmrec: the new-item setting from new_items.npy (items unseen in training)")
    group.add_argument("--interactions", type=Path, help="CSV/TSV with user_id, item_id (+ rating, timestamp)")
    group.add_argument("--feature", action="append", default=[], metavar="NAME=PATH",
                       help="a modality's .npy feature matrix, row i = item i in sorted id order (repeatable)")
    group.add_argument("--mask", type=Path, help="missing-modality mask (.npz from make-mask, or an MMRec .npy dict)")
    group.add_argument("--new-item-ratio", type=float, default=0.0,
                       help="with --interactions: hold this share of items out of training (new-item setting)")
    group.add_argument("--split-seed", type=int, default=2024, help="seed of the 8:1:1 per-user split")


def load_data(args: argparse.Namespace) -> Dataset:
    """The dataset named by the data flags."""
    from dgmrec_core.mmrec import load_dataset, load_mmrec

    if bool(args.mmrec) == bool(args.interactions):
        raise DataError(None, "give exactly one of --mmrec FOLDER or --interactions FILE")
    if args.mmrec:
        ratio = None if str(args.missing_ratio).lower() == "none" else args.missing_ratio
        return load_mmrec(args.mmrec, missing_ratio=ratio, new_items=args.new_items)
    features = {}
    for spec in args.feature:
        name, sep, path = spec.partition("=")
        if not sep:
            raise DataError(None, f"--feature expects NAME=PATH, got '{spec}'")
        features[name] = path
    if not features:
        raise DataError(None, "--interactions needs at least one --feature NAME=PATH")
    return load_dataset(args.interactions, features, mask_path=args.mask, seed=args.split_seed,
                        new_item_ratio=args.new_item_ratio)


def _write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


RUN_FILES = ("model.pt", "metrics.json", "history.json")


def check_run_folder(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse (``DataError``) an --out that is not a run folder, or holds a run, unless --resume / --force."""
    problem = own_folder_problem(out)
    if problem:
        raise DataError(out, problem, field="--out")
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(out, "exists and is a file, not a run folder: choose another --out", field="--out")
    names = {p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}
    foreign = sorted(names - set(RUN_FILES))
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise DataError(out, f"exists and is not a training run (it holds {shown}); choose another --out, or add "
                             "--force to write the run into it", field="--out")
    if "model.pt" in names and not resume and not force:
        raise DataError(out, "holds a training run already (model.pt): add --resume to continue it, --force to "
                             "train afresh over it, or choose another --out", field="--out")


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from dgmrec_core.trainer import fit

    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    dataset = load_data(args)
    out = Path(args.out)
    check_run_folder(out, resume=args.resume, force=args.force)
    result = fit(dataset, config, checkpoint=out / "model.pt", resume=args.resume)
    metrics = {"best_epoch": result.best_epoch, "valid": result.valid, "test": result.test,
               "test_new_items": result.test_new_items, "validation_problem": result.validation_problem,
               "config": config.to_dict()}
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "history.json", result.history)
    print(json.dumps({"best_epoch": result.best_epoch, "test": result.test}, indent=2))
    print(f"saved {out / 'model.pt'}, {out / 'metrics.json'}, {out / 'history.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dgmrec_core.checkpoint import dataset_fingerprint, load_model
    from dgmrec_core.trainer import evaluate

    model, payload = load_model(args.checkpoint)
    dataset = load_data(args)
    if dataset_fingerprint(dataset) != payload["fingerprint"]:
        raise DataError(args.checkpoint, "the checkpoint was trained on different data than given here")
    result = {"checkpoint": str(args.checkpoint), "split": args.split,
              "all_users": evaluate(model, dataset, args.split)}
    if dataset.new_items is not None and len(dataset.new_items):
        result["new_items"] = evaluate(model, dataset, args.split, new_items_only=True)
    if args.out:
        _write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_make_mask(args: argparse.Namespace) -> int:
    from dgmrec_core.masking import make_missing_mask, save_mask

    names = args.modalities.split(",")
    observed = make_missing_mask(args.items, len(names), args.ratio, args.seed)
    save_mask(args.out, observed, names)
    lost = (~observed).sum(0)
    print(f"saved {args.out}: {args.items} items, " + ", ".join(f"{n} missing {k}" for n, k in zip(names, lost)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train DGMRec (or a baseline) and evaluate it",
                       description="Train on interactions and features with missing modalities; early stopping "
                                   "on validation Recall@20; writes model.pt, metrics.json, history.json to --out.")
    add_data_arguments(p)
    add_config_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="output folder for the checkpoint and metrics")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out/model.pt if it exists (the options must match the checkpoint's, "
                        "except --epochs)")
    p.add_argument("--force", action="store_true",
                   help="write into an --out that holds other files or a finished run (its model.pt is replaced)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint (full ranking, Recall/NDCG/Hit@10/20/50)",
                       description="Full ranking over all items with training items excluded, for all users and, "
                                   "with the new-item setting, for new items' test interactions.")
    add_data_arguments(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt written by `dgmrec train`")
    p.add_argument("--split", choices=("valid", "test"), default="test", help="which split to evaluate")
    p.add_argument("--out", type=Path, help="write the metrics to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("make-mask", help="draw a missing-modality mask (the paper's protocol)",
                       description="ratio of items masked: half of them lose every modality, the rest lose "
                                   "exactly one, split equally (2 modalities: 1/4 text, 1/4 image, 1/2 both).")
    p.add_argument("--items", type=int, required=True, help="number of items")
    p.add_argument("--modalities", default="image,text", help="comma-separated modality names")
    p.add_argument("--ratio", type=float, default=2 / 3, help="share of items masked (default 2/3)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.set_defaults(func=cmd_make_mask)
