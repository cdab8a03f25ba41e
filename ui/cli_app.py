"""`dgmrec demo`, `dgmrec serve`, `dgmrec finetune-encoder`: the product's face on the command line."""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from pathlib import Path

from dgmrec_core.errors import DataError
from ui.cli_index import INDEX_ROOT, _index_dir


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_access(args: argparse.Namespace) -> tuple[str, str] | None:
    """The (user, password) the page asks for; a ``DataError`` for a non-loopback --host with neither
    --auth nor --public, or a malformed --auth."""
    auth = None
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise DataError(None, "--auth expects USER:PASS (both non-empty)", field="--auth")
        auth = (user, password)
    if auth is None and not args.public and not _is_loopback(args.host):
        raise DataError(None, f"--host {args.host} makes the page reachable from other machines: give "
                              "--auth USER:PASS to ask for a password, or --public to open it to everyone",
                        field="--host")
    return auth


def _serve(index_dir: Path, host: str, port: int, encoder_note: str | None = None,
           auth: tuple[str, str] | None = None) -> int:
    from retrieval.search.engine import SearchEngine
    from retrieval.demo.showcase import encoder_note as describe
    from ui.app import launch

    print(f"serve: loading {index_dir}", flush=True)
    engine = SearchEngine.load(index_dir)
    note = encoder_note or describe(engine.info.encoder)
    try:
        launch(engine, {"index": str(index_dir), "encoder": note}, host=host, port=port, auth=auth)
    except OSError as exc:
        print(f"error: cannot serve on {host}:{port} ({exc}); choose another port with --port", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from retrieval.demo.run import run_demo

    auth = None if args.no_serve else server_access(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    built = run_demo(args.work, catalog=args.catalog, interactions=args.interactions,
                     index_dir=INDEX_ROOT / args.index_name, n_items=args.items, encoder_mode=args.encoder,
                     finetune_epochs=args.finetune_epochs, epochs=args.epochs)
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in built.seconds.items())
    print(f"demo: index {built.index_dir} ready in {time.perf_counter() - started:.1f}s ({steps})")
    print(f"demo: encoder: {built.encoder['note']}")
    if args.no_serve:
        print(f"demo: not serving (--no-serve); later: dgmrec serve --index {built.index_dir}")
        return 0
    return _serve(built.index_dir, args.host, args.port, built.encoder["note"], auth)


def cmd_serve(args: argparse.Namespace) -> int:
    auth = server_access(args)
    return _serve(_index_dir(args.index), args.host, args.port, auth=auth)


def cmd_finetune_encoder(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from retrieval.encode.finetune import finetune_clip

    record = finetune_clip(args.catalog, args.out, model_name=args.model_name, base_pretrained=args.base_pretrained,
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(json.dumps({k: v for k, v in record.items() if k != "loss_curve"}, indent=2))
    print(f"held-out text->image ({record['n_eval_pairs']} pairs): recall@1 {record['eval_recall_at_1']:.3f} "
          f"(chance {record['chance_recall_at_1']:.3f}), recall@10 {record['eval_recall_at_10']:.3f} "
          f"(chance {record['chance_recall_at_10']:.3f}); batch {record['batch_size']}, "
          f"{record['steps_per_epoch']} steps per epoch")
    for warning in record["warnings"]:
        print(f"warning: {warning}")
    if record["failed"]:
        print(f"fine-tuning FAILED: {'; '.join(record['failed'])}. Do not build with {args.out} (kept only to "
              "inspect); try more epochs, another --lr, or more image-text pairs.", file=sys.stderr)
        return 1
    print(f"saved {args.out} (record in {args.out}.json); use it with: "
          f"dgmrec build ... --model-name {args.model_name} --pretrained {args.out}")
    return 0


def _add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port of the web page (default 7860)")
    p.add_argument("--auth", metavar="USER:PASS",
                   help="ask for this user name and password on the page (needed with a non-loopback --host "
                        "unless --public)")
    p.add_argument("--public", action="store_true",
                   help="allow a non-loopback --host without --auth: the page is open to everyone who can reach it")


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_register_demo, _register_serve, _register_finetune_encoder):
        add(sub)


def _register_demo(sub: argparse._SubParsersAction) -> None:
    from retrieval.defaults import DEMO_FINETUNE_EPOCHS, DEMO_TRAINING, ENCODER_MODES, FINETUNE_EPOCHS

    p = sub.add_parser("demo", help="build everything from the sample shop (or a catalog) and serve the page",
                       description="One command from nothing to the web page: make the sample shop (or read "
                                   "--catalog/--interactions), choose the encoder (pretrained open_clip ViT-B-32 "
                                   "where its weights can be had, else a compact model fine-tuned on the "
                                   "catalog), encode, train DGMRec, generate missing modalities, index, and "
                                   "serve the Gradio page. Every step is cached in --work: a second run starts "
                                   "in seconds.")
    p.add_argument("--catalog", type=Path,
                   help="your catalog instead of the sample shop (.csv/.tsv/.jsonl: item_id, text, image)")
    p.add_argument("--interactions", type=Path,
                   help="interactions for --catalog (CSV/TSV: user_id, item_id, optional rating, timestamp); "
                        "without them the page serves search only (no recommendations)")
    p.add_argument("--work", type=Path, default=Path(".cache/demo"),
                   help="cache folder of the sample shop, encoder, features and model (default .cache/demo)")
    p.add_argument("--index-name", default="sample-shop",
                   help="the index is written to ./indexes/NAME (default sample-shop)")
    p.add_argument("--items", type=int, default=3000, help="items in the sample shop (default 3000; users: half that)")
    p.add_argument("--encoder", choices=ENCODER_MODES, default="auto",
                   help="'auto': pretrained ViT-B-32 where its weights can be had, else the fine-tuned compact "
                        "encoder; 'pretrained': that or fail; 'compact': always fine-tune the compact encoder")
    p.add_argument("--finetune-epochs", type=int,
                   help=f"epochs of the compact encoder's fine-tuning (default {DEMO_FINETUNE_EPOCHS} on the sample "
                        f"shop, {FINETUNE_EPOCHS} on a --catalog)")
    p.add_argument("--epochs", type=int,
                   help=f"maximum DGMRec training epochs (default: the demo's budget, {DEMO_TRAINING['epochs']})")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-serve", action="store_true", help="build (or check) everything, then exit without serving")
    _add_server_arguments(p)
    p.set_defaults(func=cmd_demo)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the web page for an index built before",
                       description="Search (text to images, image to texts, personalised), recommendations, "
                                   "generation quality and a catalog overview, for one index.")
    p.add_argument("--index", required=True, help="index folder (e.g. indexes/sample-shop), or a name under ./indexes/")
    _add_server_arguments(p)
    p.set_defaults(func=cmd_serve)


def _register_finetune_encoder(sub: argparse._SubParsersAction) -> None:
    from retrieval.defaults import COMPACT_MODEL, FINETUNE_BATCH, FINETUNE_EPOCHS, PRETRAINED_LR, SCRATCH_LR

    p = sub.add_parser("finetune-encoder", help="train a compact open_clip encoder on a catalog's image-text pairs",
                       description="Contrastive (CLIP) training on the catalog's items that have both an image "
                                   "and a text; writes a checkpoint usable as --pretrained FILE with "
                                   "--model-name, and FILE.json with the training record and held-out recall.")
    p.add_argument("--catalog", type=Path, required=True, help="catalog file (.csv/.tsv/.jsonl: item_id, text, image)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (e.g. encoders/shop.pt)")
    p.add_argument("--model-name", default=COMPACT_MODEL,
                   help=f"open_clip architecture (default {COMPACT_MODEL}, sized for a CPU)")
    p.add_argument("--base-pretrained",
                   help="start from these weights: an open_clip pretrained tag or a checkpoint file "
                        "(default: from scratch)")
    p.add_argument("--epochs", type=int, default=FINETUNE_EPOCHS, help=f"training epochs (default {FINETUNE_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=FINETUNE_BATCH,
                   help=f"most image-text pairs per batch (default {FINETUNE_BATCH}); smaller catalogs get "
                        "smaller batches, so that an epoch has at least 8 steps")
    p.add_argument("--lr", type=float,
                   help=f"learning rate (default {SCRATCH_LR:g} from scratch, {PRETRAINED_LR:g} from pretrained "
                        "weights)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, which follows "
                                                          "OMP_NUM_THREADS)")
    p.set_defaults(func=cmd_finetune_encoder)
