"""`dgmrec train`, `dgmrec evaluate`, `dgmrec make-mask`: the model side of the command line.

torch and the data modules are imported by the commands that run, not here: `dgmrec --help` stays quick.
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dgmrec_core.atomic import atomic_path, atomic_write_text, own_folder_problem, sha256_file
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.errors import DataError
from dgmrec_core.options import DEVICE_HELP, help_of
from dgmrec_core.versioned import current_version, generation, publish, remove_stale, write_lock

if TYPE_CHECKING:
    from dgmrec_core import distributed
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
                               help=help_of(DGMRecConfig, f.name))
        else:
            group.add_argument(flag, type=type(f.default), default=None, metavar=type(f.default).__name__.upper(),
                               help=help_of(DGMRecConfig, f.name))


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


def partial_folder(out: Path) -> Path:
    """Where a run in progress keeps its checkpoint (``.RUN.partial`` beside ``RUN``) until it is published."""
    return out.parent / f".{out.name}.partial"


def check_run_folder(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse (``DataError``) an --out that is not a run folder, or holds a run, unless --resume / --force."""
    if (partial_folder(out) / "model.pt").is_file() and not resume and not force:
        raise DataError(out, f"an interrupted training of this run is in {partial_folder(out)}: add --resume to "
                             "continue it, --force to train afresh, or choose another --out", field="--out")
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


def _run_busy(out: Path) -> Callable[[Path], Exception]:
    return lambda lock: DataError(out, f"another `dgmrec train` is writing this run (lock {lock} is held); try again "
                                       "when it has finished, or choose another --out", field="--out")


def _start_checkpoint(out: Path, *, resume: bool, force: bool) -> tuple[Path, bool]:
    """The checkpoint training writes to (in ``partial_folder(out)``) and whether it was copied from the
    published run (a resume of a finished run) rather than left by an interrupted one."""
    work = partial_folder(out)
    checkpoint = work / "model.pt"
    if force and not resume:
        shutil.rmtree(work, ignore_errors=True)
    if not resume or checkpoint.is_file():
        work.mkdir(exist_ok=True)
        return checkpoint, False
    try:
        published = current_version(out, "metrics.json") / "model.pt"
    except DataError:
        published = None
    work.mkdir(exist_ok=True)
    if published is None or not published.is_file():
        return checkpoint, False
    with atomic_path(checkpoint) as tmp:
        shutil.copy2(published, tmp)
    return checkpoint, True


def publish_run(out: Path, files: dict[str, Path | str]) -> Path:
    """Write a run's files (name -> source file, or text) as a new version of ``out``, switched in with one
    rename (``dgmrec_core.versioned``); call under the run's lock. Returns the version folder."""
    try:
        previous = current_version(out, "metrics.json")
    except DataError:
        previous = None
    remove_stale(out, keep={p for p in (previous,) if p is not None})

    def fill(tmp: Path) -> None:
        for name, source in files.items():
            if isinstance(source, Path):
                shutil.copy2(source, tmp / name)
            else:
                atomic_write_text(tmp / name, source)

    version = publish(out, fill, generation(previous) + 1)
    remove_stale(out, keep={version, *(p for p in (previous,) if p is not None and p.parent == out.parent)})
    return version


def cmd_train(args: argparse.Namespace) -> int:
    """Train and publish a run. Launched by torchrun with several processes, the training is data-parallel:
    rank 0 checks and locks --out, prepares the checkpoint and publishes the run; the others train along."""
    import torch

    from dgmrec_core import distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = distributed.init(args.device)
    try:
        config = config_from_args(args)
        dataset = load_data(args)
        if ctx.is_main:
            _train_and_publish(ctx, args, dataset, config)
        else:
            _train_along(ctx, args, dataset, config)
    except BaseException:
        distributed.shutdown(together=False)
        raise
    distributed.shutdown()
    return 0


def _train_along(ctx: distributed.Context, args: argparse.Namespace, dataset: Dataset, config: DGMRecConfig) -> None:
    """A rank other than 0: train on the checkpoint rank 0 prepared (read on --resume, never written)."""
    from dgmrec_core import distributed
    from dgmrec_core.trainer import fit

    checkpoint = distributed.broadcast_object(ctx, None)
    fit(dataset, config, checkpoint=checkpoint, resume=args.resume, progress=False, device=ctx.device,
        take_features=True)  # nothing reads the data's features afterwards: no second copy


def _train_and_publish(ctx: distributed.Context, args: argparse.Namespace, dataset: Dataset,
                       config: DGMRecConfig) -> None:
    from dgmrec_core import distributed
    from dgmrec_core.trainer import fit

    out = Path(args.out)
    check_run_folder(out, resume=args.resume, force=args.force)
    with write_lock(out, _run_busy(out)):
        checkpoint, copied = _start_checkpoint(out, resume=args.resume, force=args.force)
        distributed.broadcast_object(ctx, checkpoint)
        try:
            result = fit(dataset, config, checkpoint=checkpoint, resume=args.resume, device=ctx.device,
                         take_features=True)  # nothing reads the data's features afterwards: no second copy
        except BaseException:
            if copied:  # nothing of this attempt to keep: the published run is unchanged
                shutil.rmtree(checkpoint.parent, ignore_errors=True)
            raise
        metrics = {"best_epoch": result.best_epoch, "valid": result.valid, "test": result.test,
                   "test_new_items": result.test_new_items, "validation_problem": result.validation_problem,
                   "dropped_unseen_rows": dataset.interactions.dropped_unseen, "processes": ctx.world,
                   "config": config.to_dict(), "model_sha256": sha256_file(checkpoint)}
        publish_run(out, {"model.pt": checkpoint, "metrics.json": json.dumps(metrics, indent=2),
                          "history.json": json.dumps(result.history, indent=2)})
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
    print(json.dumps({"best_epoch": result.best_epoch, "test": result.test}, indent=2))
    print(f"saved {out / 'model.pt'}, {out / 'metrics.json'}, {out / 'history.json'}")


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
                                   "on validation Recall@20; writes model.pt, metrics.json, history.json to --out. "
                                   "The run is published whole: --out is a link to a version folder switched with "
                                   "one rename, so a kill leaves the old run or the new one; the checkpoint of a "
                                   "run in progress is kept in .OUT.partial beside it for --resume.")
    add_data_arguments(p)
    add_config_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="output folder for the checkpoint and metrics")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (its checkpoint in .OUT.partial beside --out) or a finished "
                        "one (--out/model.pt); the options must match the checkpoint's, except --epochs")
    p.add_argument("--force", action="store_true",
                   help="write into an --out that holds other files or a finished run (its model.pt is replaced)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + "; launch with `torchrun --nproc_per_node N` "
                                                   "for data-parallel training (README)")
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
