"""open_clip encoders: raw per-modality item features (image tower, text tower), L2-normalised.

Weights come from an open_clip pretrained tag (downloaded once into the cache), a local checkpoint
file, or nowhere (``pretrained=None``: seeded random weights, for tests and smoke runs). Two compact
architectures are registered at import: ``dgmrec-tiny`` (tests) and ``dgmrec-compact`` (the encoder
``dgmrec finetune-encoder`` trains on a CPU).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import open_clip
import torch
from PIL import Image
from tqdm import tqdm

from dgmrec_core.atomic import sha256_file
from dgmrec_core.errors import DataError
from retrieval.encode.spec import DEFAULT_MODEL, DEFAULT_PRETRAINED
from retrieval.images import ImageUnreadable, open_rgb

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
DGMREC_MODELS = ("dgmrec-tiny", "dgmrec-compact")
_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                    "resize_mode": "image_resize_mode"}


def register_model_configs() -> None:
    """Register the ``dgmrec-*`` architectures with open_clip (idempotent)."""
    if not set(DGMREC_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


register_model_configs()


class EncoderUnavailable(RuntimeError):
    """The encoder's weights cannot be loaded (offline, unknown tag, missing or mismatched file)."""


class Encoder(Protocol):
    """What the feature cache needs from an encoder."""

    @property
    def embed_dim(self) -> int: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Image.Image | str | Path]) -> np.ndarray: ...

    def fingerprint(self) -> dict[str, Any]: ...


def _offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set now, whatever it was at import."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _cached_tag_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """Path of the already-downloaded weights of an open_clip pretrained tag, or None."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        candidates = [filename] if filename else []
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        candidates += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if tag_cfg.get("url"):
        target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(tag_cfg["url"])
        if target.is_file():
            return str(target)
    return None



def _how_to_fix(model_name: str) -> str:
    return (f"Supply weights in one of these ways: a local checkpoint file for '{model_name}' "
            f"(--pretrained /path/to/weights.pt|.safetensors); pretrained=None (--pretrained none) for "
            f"seeded random weights (tests and smoke runs only); or train a compact encoder on your "
            f"catalog with `dgmrec finetune-encoder` and pass its checkpoint with --model-name dgmrec-compact.")


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class ClipEncoder:
    """An open_clip model encoding texts and images into L2-normalised float32 vectors.

    ``pretrained`` is an open_clip tag (e.g. ``"laion2b_s34b_b79k"``), a local checkpoint file, or
    None for random weights drawn with ``seed``. Tag weights are taken from the local cache when
    present; with HF_HUB_OFFLINE=1 and no cached copy, :class:`EncoderUnavailable` is raised at once.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, pretrained: str | Path | None = DEFAULT_PRETRAINED,
                 device: str | torch.device | None = None, batch_size: int = 64, seed: int = 0,
                 cache_dir: str | Path | None = None) -> None:
        self.model_name = model_name
        self.pretrained = None if pretrained is None else str(pretrained)
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._cache_dir = None if cache_dir is None else str(cache_dir)
        self._model_cfg = open_clip.get_model_config(model_name.replace("/", "-"))
        if self._model_cfg is None:
            raise EncoderUnavailable(f"unknown open_clip model '{model_name}'; registered here: "
                                     f"{', '.join(DGMREC_MODELS)}, or any of open_clip.list_models()")
        self.checkpoint_sha256: str | None = None
        self.model, _, self.preprocess = self._build()
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    def _build(self) -> tuple[torch.nn.Module, Any, Any]:
        kwargs: dict[str, Any] = {"device": self.device, "cache_dir": self._cache_dir}
        weights = self.pretrained
        if weights is not None:
            if os.path.isfile(weights):
                self.checkpoint_sha256 = sha256_file(weights)
            else:
                tag_cfg = open_clip.get_pretrained_cfg(self.model_name.replace("/", "-"), weights)
                if not tag_cfg:
                    reason = ("checkpoint file not found" if Path(weights).suffix or os.sep in weights
                              else "not a known pretrained tag for this model nor an existing file")
                    raise EncoderUnavailable(f"cannot load weights '{weights}' for '{self.model_name}': "
                                             f"{reason}. {_how_to_fix(self.model_name)}")
                cached = _cached_tag_file(tag_cfg, self._cache_dir)
                if cached is not None:  # load the cached file directly: no network round trip
                    weights = cached
                    kwargs.update({arg: tag_cfg[key] for key, arg in _PREPROCESS_KEYS.items() if key in tag_cfg})
                elif _offline():
                    raise EncoderUnavailable(
                        f"weights '{weights}' for '{self.model_name}' are not in the local cache and "
                        f"HF_HUB_OFFLINE is set, so they cannot be downloaded. {_how_to_fix(self.model_name)}")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return open_clip.create_model_and_transforms(self.model_name, pretrained=weights, **kwargs)
        except Exception as e:
            raise EncoderUnavailable(f"cannot load weights '{self.pretrained}' for '{self.model_name}': {e}. "
                                     f"{_how_to_fix(self.model_name)}") from e

    @property
    def embed_dim(self) -> int:
        return int(self._model_cfg["embed_dim"])

    def fingerprint(self) -> dict[str, Any]:
        """What determines the features: architecture, weights, preprocessing, output size."""
        source = None if self.pretrained is None else ("file" if self.checkpoint_sha256 else self.pretrained)
        return {
            "model": self.model_name,
            "pretrained": source,
            "checkpoint_sha256": self.checkpoint_sha256,
            "seed": self.seed if self.pretrained is None else None,
            "preprocess": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in sorted(self.model.visual.preprocess_cfg.items())},
            "context_length": int(self._model_cfg["text_cfg"].get("context_length", 77)),
            "embed_dim": self.embed_dim,
        }

    def _run(self, n: int, desc: str, encode_batch: Any) -> np.ndarray:
        out = np.zeros((n, self.embed_dim), dtype=np.float32)
        with torch.inference_mode(), tqdm(total=n, desc=desc, unit="item", leave=False,
                                          disable=n <= self.batch_size) as bar:
            for part in _batches(n, self.batch_size):
                feats = encode_batch(part)
                out[part] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
                bar.update(part.stop - part.start)
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts with the text tower: float32 (n, embed_dim), unit rows."""
        return self._run(len(texts), "encoding texts",
                         lambda part: self.model.encode_text(self.tokenizer(list(texts[part])).to(self.device)))

    def encode_images(self, images: Sequence[Image.Image | str | Path]) -> np.ndarray:
        """Encode images (PIL images or file paths) with the image tower: float32 (n, embed_dim), unit rows."""
        def batch(part: slice) -> torch.Tensor:
            pixels = torch.stack([self.preprocess(_as_rgb(img)) for img in images[part]])
            return self.model.encode_image(pixels.to(self.device))
        return self._run(len(images), "encoding images", batch)


def _as_rgb(image: Image.Image | str | Path) -> Image.Image:
    try:
        return open_rgb(image)
    except ImageUnreadable as e:
        raise DataError(image, f"cannot read image: {e}") from e
