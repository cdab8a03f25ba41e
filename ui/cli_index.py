"""`dgmrec build`, `search`, `recommend`, `add-items`, `verify`, `compact`: indexes and queries on the command
line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retrieval.build.options import BuildOptions
from retrieval.defaults import MAX_SEGMENTS
from retrieval.encode.spec import EncoderSpec
from dgmrec_core.options import choices_of, help_of
from ui.cli_train import add_config_arguments, config_from_args

INDEX_ROOT = Path("indexes")
ROUTE_HELP = ("cross-modal route: 'auto' (default: the route the build's held-out measurement found best for "
              "this pair of modalities), 'dgmrec' (translator + preference + decoder, docs/DESIGN.md), "
              "'direct' (raw encoder vector into the other index; aligned CLIP spaces only) or 'fused' "
              "(normalised sum of both); same-modality search ignores it")


def _index_dir(value: str) -> Path:
    """An index folder: a path, or a bare name under ./indexes/."""
    path = Path(value)
    return path if path.exists() or len(path.parts) > 1 else INDEX_ROOT / value


def _pretrained(value: str) -> str | None:
    return None if value.lower() == "none" else value


def cmd_build(args: argparse.Namespace) -> int:
    import torch

    from retrieval.build.pipeline import build_index

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or INDEX_ROOT / args.name
    options = BuildOptions(encoder=EncoderSpec(args.model_name, args.pretrained, args.encoder_seed),
                           config=config_from_args(args), work_dir=args.work_dir, skip_bad=args.skip_bad,
                           holdout=args.holdout, kind=args.kind, force=args.force)
    build_index(args.catalog, args.interactions, out, options)
    print(f"built {out}; try: dgmrec search --index {out} --text \"...\"")
    return 0


def _print_hits(hits: list, as_json: bool, header: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps({**header, "hits": [h.to_dict() for h in hits]}, indent=2))
        return
    if header.get("route_taken"):
        print(f"route: {header['route']}" + (f" -> {header['route_taken']} (best on this index's held-out items)"
                                              if header["route"] == "auto" else ""))
    if not hits:
        print("no results")
    for h in hits:
        label = h.title or (h.text or "")[:60] or "(no text)"
        flag = "  [generated]" if h.generated else ""
        print(f"{h.rank:3d}. {h.score:8.4f}  {h.item_id}  {label}{flag}")
        if h.image:
            print(f"               {h.image}")


def cmd_search(args: argparse.Namespace) -> int:
    from retrieval.search.engine import SearchEngine

    engine = SearchEngine.load(_index_dir(args.index))
    if args.text is not None:
        target = args.target or "image"
        hits = engine.search_text(args.text, target=target, k=args.k, user=args.user, route=args.route,
                                  personalise=args.personalise)
        query, source = {"text": args.text}, "text"
    else:
        target = args.target or "text"
        hits = engine.search_image(args.image, target=target, k=args.k, user=args.user, route=args.route,
                                   personalise=args.personalise)
        query, source = {"image": str(args.image)}, "image"
    _print_hits(hits, args.json, {"query": query, "target": target, "route": args.route,
                                  "route_taken": engine.resolve_route(source, target, args.route), "user": args.user})
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from retrieval.search.engine import SearchEngine

    engine = SearchEngine.load(_index_dir(args.index))
    hits = engine.recommend(args.user, k=args.k)
    _print_hits(hits, args.json, {"user": args.user})
    return 0


def cmd_add_items(args: argparse.Namespace) -> int:
    from retrieval.build.ingest import add_items
    from retrieval.build.pipeline import report_skips
    from retrieval.search.engine import SearchEngine

    engine = SearchEngine.load(_index_dir(args.index))
    added = add_items(engine, args.catalog, skip_bad=args.skip_bad, on_skipped=report_skips)
    print(f"added {len(added)} item(s) to {engine.bundle.folder}: {', '.join(added[:10])}"
          + (" ..." if len(added) > 10 else ""))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from retrieval.index.bundle import IndexBundle
    from retrieval.index.storage import verify_bundle

    folder = _index_dir(args.index)
    problems = verify_bundle(folder)
    if problems:
        for problem in problems:
            print(f"BAD {folder}: {problem}")
        print(f"{folder}: {len(problems)} problem(s); rebuild the index or restore its files")
        return 1
    n = len(IndexBundle.load(folder).meta["checksums"])  # the structural checks too (rows, dimensions)
    print(f"ok: {folder}: meta.json and {n} file(s) match their recorded sizes and sha256")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from retrieval.index.bundle import IndexBundle

    folder = _index_dir(args.index)
    bundle = IndexBundle.load(folder)
    before = len(bundle.segments)
    if bundle.compact():
        print(f"compacted {folder}: {before} segments -> 1 ({len(bundle)} items)")
    else:
        print(f"{folder} is one segment already ({len(bundle)} items): nothing written")
    return 0


def _add_index_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index folder, or the name of one under ./indexes/")


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_register_build, _register_search, _register_recommend, _register_add_items, _register_verify,
                _register_compact):
        add(sub)


def _register_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build a searchable index from a catalog (and interactions)",
                       description="Encode the catalog with open_clip, train DGMRec on the interactions (or, "
                                   "without them, its generation on the items' own image-text pairs), "
                                   "generate every missing modality and write the FAISS indexes. Features "
                                   "and the model are cached, so an unchanged re-run is quick.")
    p.add_argument("catalog", type=Path, help="catalog file (.csv, .tsv, .jsonl or .parquet: item_id, text, image)")
    p.add_argument("interactions", type=Path, nargs="?",
                   help="interactions file (CSV/TSV/Parquet: user_id, item_id, ...); optional: without it the "
                        "index serves search (generation trained on the items' own image-text pairs) but no "
                        "recommendations or personalisation")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--name", help="index name: written to ./indexes/NAME")
    where.add_argument("--out", type=Path, help="index folder to write")
    build, encoder = BuildOptions(), EncoderSpec()
    p.add_argument("--work-dir", type=Path, help=help_of(BuildOptions, "work_dir"))
    p.add_argument("--model-name", default=encoder.model_name, help=help_of(EncoderSpec, "model_name"))
    p.add_argument("--pretrained", type=_pretrained, default=encoder.pretrained,
                   help=help_of(EncoderSpec, "pretrained"))
    p.add_argument("--encoder-seed", type=int, default=encoder.seed, help=help_of(EncoderSpec, "seed"))
    p.add_argument("--skip-bad", action="store_true", help=help_of(BuildOptions, "skip_bad"))
    p.add_argument("--holdout", type=float, default=build.holdout, help=help_of(BuildOptions, "holdout"))
    p.add_argument("--kind", choices=choices_of(BuildOptions, "kind"), default=build.kind,
                   help=help_of(BuildOptions, "kind"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--force", action="store_true", help=help_of(BuildOptions, "force"))
    add_config_arguments(p)
    p.set_defaults(func=cmd_build)


def _register_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index with a text or an image",
                       description="Text to images (default for --text), image to texts (default for "
                                   "--image), or same-modality search with --target.")
    _add_index_argument(p)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="query text")
    query.add_argument("--image", type=Path, help="query image file")
    p.add_argument("--target", choices=("image", "text"),
                   help="modality searched (default: the other one than the query's)")
    p.add_argument("--user", help="personalise with this user's preference (a user id of the index)")
    p.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--route", choices=("auto", "dgmrec", "direct", "fused"), default="auto", help=ROUTE_HELP)
    p.add_argument("--personalise", choices=("rerank", "preference"), default="rerank",
                   help="with --user: 'rerank' (default) reorders the items matching the query by the user's "
                        "scores; 'preference' puts the user's modality preference into the translated query")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_search)


def _register_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="recommend items to a user",
                       description="Top items by DGMRec's score for the user, items seen in training excluded.")
    _add_index_argument(p)
    p.add_argument("--user", required=True, help="user id (as in the interactions file)")
    p.add_argument("--k", type=int, default=10, help="number of recommendations (default 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_recommend)


def _register_add_items(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("add-items", help="add new catalog items to an index without retraining",
                       description="Encode the new items, generate their missing modalities with the trained "
                                   "model and append them to every index.")
    _add_index_argument(p)
    p.add_argument("--catalog", type=Path, required=True, help="catalog file of the new items")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop bad rows (and undecodable images) instead of stopping; lists them and records "
                        "them in the index")
    p.set_defaults(func=cmd_add_items)


def _register_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every file of an index against its recorded size and sha256",
                       description="Reads every file of the index in full and compares it with the size and "
                                   "sha256 recorded when it was written; names each bad file (exit code 1).")
    _add_index_argument(p)
    p.set_defaults(func=cmd_verify)


def _register_compact(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compact", help="rewrite an index as one segment (add-items adds one segment each)",
                       description="Each add-items adds a segment of files to the index (only the new rows are "
                                   f"written); past {MAX_SEGMENTS} segments add-items rewrites the index as one. "
                                   "This rewrites it as one segment now (a new version, like any write).")
    _add_index_argument(p)
    p.set_defaults(func=cmd_compact)
