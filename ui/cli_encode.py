"""`dgmrec encode`: a catalog's feature cache, alone; launched by torchrun, in data-parallel shards.

torch and open_clip are imported by the command when it runs, not here: `dgmrec --help` stays quick.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dgmrec_core.options import DEVICE_HELP, help_of
from retrieval.encode.spec import EncoderSpec

log = logging.getLogger("dgmrec.encode")


def cmd_encode(args: argparse.Namespace) -> int:
    import torch

    from dgmrec_core import distributed
    from retrieval.catalog import load_catalog
    from retrieval.encode.cache import encode_catalog
    from retrieval.encode.clip import ClipEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = distributed.init(args.device)
    try:
        catalog, problems = load_catalog(args.catalog, skip_bad=args.skip_bad)
        encoder = ClipEncoder(args.model_name, args.pretrained, device=ctx.device, seed=args.encoder_seed)
        args.cache.mkdir(parents=True, exist_ok=True)
        encoded = encode_catalog(catalog, encoder, args.cache, ctx=ctx)
        if ctx.is_main:
            log.info("encoded %d items with %s on %d process(es); newly encoded %s; skipped %d bad row(s); cache %s",
                     catalog.n_items, EncoderSpec.of(encoder).describe(), ctx.world,
                     ", ".join(f"{n} {m}s" for m, n in encoded.n_encoded.items()), len(problems), args.cache)
    except BaseException:
        distributed.shutdown(together=False)
        raise
    distributed.shutdown()
    return 0


def _pretrained(value: str) -> str | None:
    return None if value.lower() == "none" else value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode a catalog's texts and images into a feature cache",
                       description="Encode every item's text and image with open_clip into CACHE, content-keyed: "
                                   "`dgmrec build --work-dir DIR` with the same encoder reuses DIR/features. "
                                   "Launched by `torchrun --nproc_per_node N -m ui.cli encode ...`, each process "
                                   "encodes a shard and rank 0 writes the merged cache.")
    encoder = EncoderSpec()
    p.add_argument("catalog", type=Path, help="catalog file (.csv, .tsv, .jsonl or .parquet: item_id, text, image)")
    p.add_argument("--cache", type=Path, required=True, help="feature cache folder to fill (created if needed)")
    p.add_argument("--model-name", default=encoder.model_name, help=help_of(EncoderSpec, "model_name"))
    p.add_argument("--pretrained", type=_pretrained, default=encoder.pretrained,
                   help=help_of(EncoderSpec, "pretrained"))
    p.add_argument("--encoder-seed", type=int, default=encoder.seed, help=help_of(EncoderSpec, "seed"))
    p.add_argument("--skip-bad", action="store_true", help="drop bad catalog rows and images instead of stopping")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=cmd_encode)
