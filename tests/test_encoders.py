"""open_clip encoders (seeded random weights, offline) and the content-keyed feature cache."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dgmrec_core.errors import DataError
from retrieval.catalog import Catalog
from retrieval.encode.clip import ClipEncoder, EncoderUnavailable, _cached_tag_file
from retrieval.encode.cache import EncodedFeatures, encode_catalog

TEXTS = ["a red ceramic mug", "green plant in a pot", "blue denim jacket", "", "a red ceramic mug"]


@pytest.fixture(scope="module")
def tiny() -> ClipEncoder:
    return ClipEncoder("dgmrec-tiny", pretrained=None, seed=0, batch_size=2, device="cpu")


def _images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = Image.new("RGB", (40 + 10 * i, 30), (80 * i % 256, 200 - 50 * i, 30 * i))
        img.paste((255, 255, 255), (5 * i, 5, 5 * i + 10, 15))
        paths.append(folder / f"{i}.png")
        img.save(paths[-1])
    return paths


def test_features_are_normalised_and_deterministic(tiny: ClipEncoder, tmp_path: Path) -> None:
    texts = tiny.encode_texts(TEXTS)
    assert texts.shape == (5, 64) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(texts[0], texts[4], atol=1e-6)  # batch position: float rounding only

    paths = _images(tmp_path)
    images = tiny.encode_images(paths)
    assert images.shape == (3, 64) and images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    from_pil = tiny.encode_images([Image.open(p) for p in paths])
    np.testing.assert_allclose(from_pil, images, atol=1e-6)
    one_by_one = np.concatenate([tiny.encode_images([p]) for p in paths])  # batching changes nothing
    np.testing.assert_allclose(one_by_one, images, atol=1e-5)

    again = ClipEncoder("dgmrec-tiny", pretrained=None, seed=0, batch_size=2, device="cpu")
    for name, weight in tiny.model.state_dict().items():
        assert torch.equal(weight, again.model.state_dict()[name]), name
    np.testing.assert_array_equal(again.encode_texts(TEXTS), texts)
    np.testing.assert_array_equal(again.encode_images(paths), images)
    assert again.fingerprint() == tiny.fingerprint()
    other = ClipEncoder("dgmrec-tiny", pretrained=None, seed=1, device="cpu")
    assert not np.allclose(other.encode_texts(TEXTS), texts)
    assert other.fingerprint() != tiny.fingerprint()

    assert tiny.encode_texts([]).shape == (0, 64)


def test_fingerprint(tiny: ClipEncoder) -> None:
    fp = tiny.fingerprint()
    assert fp["model"] == "dgmrec-tiny" and fp["pretrained"] is None and fp["seed"] == 0
    assert fp["embed_dim"] == 64 and fp["preprocess"]["size"] == [64, 64]
    json.dumps(fp)  # JSON-serialisable for the cache manifest


def test_local_checkpoint(tiny: ClipEncoder, tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), checkpoint)
    loaded = ClipEncoder("dgmrec-tiny", pretrained=checkpoint, seed=5, device="cpu")
    np.testing.assert_allclose(loaded.encode_texts(TEXTS), tiny.encode_texts(TEXTS), atol=1e-6)
    fp = loaded.fingerprint()
    assert fp["pretrained"] == "file" and len(fp["checkpoint_sha256"]) == 64 and fp["seed"] is None

    with pytest.raises(EncoderUnavailable, match="dgmrec-compact"):  # architecture mismatch
        ClipEncoder("dgmrec-compact", pretrained=checkpoint, device="cpu")


def test_unavailable_weights_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable, match="not found.*local checkpoint file"):
        ClipEncoder("dgmrec-tiny", pretrained=tmp_path / "missing.pt")
    with pytest.raises(EncoderUnavailable, match="HF_HUB_OFFLINE.*finetune-encoder"):
        ClipEncoder("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=tmp_path / "hub")
    with pytest.raises(EncoderUnavailable, match="not a known pretrained tag"):
        ClipEncoder("dgmrec-tiny", pretrained="laion2b_s34b_b79k")
    with pytest.raises(EncoderUnavailable, match="unknown open_clip model"):
        ClipEncoder("no-such-model", pretrained=None)
    assert issubclass(EncoderUnavailable, RuntimeError)


def test_cached_tag_weights_are_found_without_network(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    cfg = {"hf_hub": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"}
    assert _cached_tag_file(cfg, str(tmp_path)) == str(snapshot / "open_clip_model.safetensors")
    assert _cached_tag_file(cfg, str(tmp_path / "empty")) is None


def test_corrupt_image_at_encode_time(tiny: ClipEncoder, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.png"):
        tiny.encode_images([bad])


class CountingEncoder:
    """Wraps an encoder and records how many texts and images it was asked to encode."""

    def __init__(self, inner: ClipEncoder) -> None:
        self.inner = inner
        self.calls = {"text": 0, "image": 0}

    @property
    def embed_dim(self) -> int:
        return self.inner.embed_dim

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls["text"] += len(texts)
        return self.inner.encode_texts(texts)

    def encode_images(self, images: Sequence[Image.Image | str | Path]) -> np.ndarray:
        self.calls["image"] += len(images)
        return self.inner.encode_images(images)


def _catalog(tmp_path: Path, texts: list[str | None], images: list[Path | None]) -> Catalog:
    return Catalog(item_ids=[f"i{k}" for k in range(len(texts))], texts=texts, image_paths=images,
                   source=tmp_path / "cat.csv")


def test_encode_catalog_masks_and_zero_rows(tiny: ClipEncoder, tmp_path: Path) -> None:
    paths = _images(tmp_path / "img")
    catalog = _catalog(tmp_path, ["mug", None, "mug", None], [paths[0], paths[1], None, None])
    counter = CountingEncoder(tiny)
    result = encode_catalog(catalog, counter, tmp_path / "cache")
    assert isinstance(result, EncodedFeatures) and result.item_ids == catalog.item_ids
    assert counter.calls == {"text": 1, "image": 2}  # identical texts are encoded once
    np.testing.assert_array_equal(result.observed["text"], [True, False, True, False])
    np.testing.assert_array_equal(result.observed["image"], [True, True, False, False])
    for modality in ("text", "image"):
        features = result.features[modality]
        assert features.shape == (4, 64) and features.dtype == np.float32
        assert not features[~result.observed[modality]].any()
    np.testing.assert_allclose(result.features["text"][0], tiny.encode_texts(["mug"])[0], atol=1e-6)
    np.testing.assert_allclose(result.features["image"][1], tiny.encode_images([paths[1]])[0], atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["image.npy", "manifest.json", "text.npy"]


def test_cache_reencodes_only_changed_items(tiny: ClipEncoder, tmp_path: Path) -> None:
    paths = _images(tmp_path / "img")
    cache = tmp_path / "cache"
    texts: list[str | None] = ["mug", "plant", "jacket"]
    first = encode_catalog(_catalog(tmp_path, texts, list(paths)), tiny, cache)

    counter = CountingEncoder(tiny)
    again = encode_catalog(_catalog(tmp_path, texts, list(paths)), counter, cache)
    assert counter.calls == {"text": 0, "image": 0} and again.n_encoded == {"image": 0, "text": 0}
    for modality in ("text", "image"):
        np.testing.assert_array_equal(again.features[modality], first.features[modality])

    Image.new("RGB", (20, 20), (1, 2, 3)).save(paths[2])  # same path, new bytes
    new_image = _images(tmp_path / "more", 4)[3]
    changed = _catalog(tmp_path, ["mug", "a potted plant", "jacket", "new item"], [*paths, new_image])
    counter = CountingEncoder(tiny)
    result = encode_catalog(changed, counter, cache)
    assert counter.calls == {"text": 2, "image": 2}
    np.testing.assert_array_equal(result.features["text"][[0, 2]], first.features["text"][[0, 2]])
    np.testing.assert_array_equal(result.features["image"][:2], first.features["image"][:2])
    np.testing.assert_allclose(result.features["text"][1], tiny.encode_texts(["a potted plant"])[0], atol=1e-6)
    np.testing.assert_allclose(result.features["image"][2], tiny.encode_images([paths[2]])[0], atol=1e-6)

    other = CountingEncoder(ClipEncoder("dgmrec-tiny", pretrained=None, seed=1, device="cpu"))
    encode_catalog(changed, other, cache)  # new fingerprint: everything again
    assert other.calls == {"text": 4, "image": 4}

    (cache / "manifest.json").write_text("{not json")  # damaged cache: re-encode, don't crash
    counter = CountingEncoder(tiny)
    encode_catalog(changed, counter, cache)
    assert counter.calls == {"text": 4, "image": 4}
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
