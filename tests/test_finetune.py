"""Fine-tuning a tiny open_clip model on a small sample shop, and the attribute query benchmark."""
from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from dgmrec_core.errors import DataError
from benchmarks.attribute_eval import attribute_query_hit_rate
from retrieval.encode.clip import ClipEncoder
from retrieval.encode.finetune import (_batches, _clip_loss, _recall, _spans, batch_for, encode_text_trimmed, eval_size,
                                failure_reasons, finetune_clip, weak_figures)
from retrieval.demo.sample_shop import make_sample_shop

TINY = "dgmrec-tiny"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_shop(tmp_path_factory.mktemp("ft") / "shop", n_items=200, n_users=20, seed=5,
                            image_size=64)


@pytest.fixture(scope="module")
def trained(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    record = finetune_clip(shop / "catalog.csv", out, model_name=TINY, epochs=3, batch_size=32, lr=2e-3,
                           seed=0, device="cpu")
    return out, record


def _pairs(shop: Path) -> tuple[list[str], list[Path]]:
    with open(shop / "catalog.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["text"] and r["image"]]
    return [r["text"] for r in rows], [shop / r["image"] for r in rows]


def _eval_loss(encoder: ClipEncoder, texts: list[str], images: list[Path]) -> float:
    pixels = torch.stack([encoder.preprocess(_rgb(p)) for p in images])
    with torch.no_grad():
        return float(_clip_loss(encoder.model, pixels, encoder.tokenizer(texts)))


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def test_finetune_lowers_loss_and_writes_record(shop: Path, trained: tuple[Path, dict]) -> None:
    out, record = trained
    assert out.is_file()
    assert json.loads(Path(str(out) + ".json").read_text()) == record
    assert record["model_name"] == TINY and record["epochs"] == 3 and len(record["loss_curve"]) == 3
    assert record["n_eval_pairs"] >= 2 and record["n_train_pairs"] + record["n_eval_pairs"] < 200
    assert 0 <= record["eval_recall_at_1"] <= record["eval_recall_at_10"] <= 1
    assert record["final_loss"] == record["loss_curve"][-1] < record["loss_curve"][0]
    texts, images = _pairs(shop)
    before = _eval_loss(ClipEncoder(TINY, pretrained=None, seed=0, device="cpu"), texts, images)
    after = _eval_loss(ClipEncoder(TINY, pretrained=str(out), device="cpu"), texts, images)
    assert after < before - 0.1


def test_checkpoint_reloads_with_identical_weights_and_outputs(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    saved = torch.load(out, weights_only=True)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(out))
    assert set(model.state_dict()) == set(saved)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    encoder = ClipEncoder(TINY, pretrained=str(out), device="cpu")
    model.eval()
    texts = ["a red mug", "A blue striped hat with a wide brim, ideal for travel."]
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer(TINY)(texts)), dim=-1)
    np.testing.assert_array_equal(encoder.encode_texts(texts), direct.numpy())


def test_trimmed_text_encoding_matches_open_clip() -> None:
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms(TINY)
    model.eval()
    tokens = open_clip.get_tokenizer(TINY)(["a red mug", "Ceramic mug in red with a striped finish. Great for tea."])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens))


def test_too_few_pairs_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("item_id,text,image\na,some text,\nb,,\n")
    with pytest.raises(DataError, match="at least"):
        finetune_clip(tmp_path / "c.csv", tmp_path / "m.pt", model_name=TINY)
    assert not (tmp_path / "m.pt").exists()


def _attribute_catalog(tmp_path: Path) -> Path:
    rows = [("1", "red", "mug"), ("2", "red", "hat"), ("3", "blue", "mug"), ("4", "blue", "hat"),
            ("5", "red", "mug")]
    path = tmp_path / "cat.csv"
    path.write_text("item_id,text,image,colour,category\n" + "".join(f"{i},,,{c},{k}\n" for i, c, k in rows))
    return path


def test_attribute_hit_rate_on_known_rankings(tmp_path: Path) -> None:
    answers = {"a red mug": ["2", "5"], "a red hat": ["1", "3"], "a blue mug": ["3", "1"],
               "a blue hat": ["1", "2", "4"]}
    asked: list[str] = []

    def query_fn(text: str) -> list[str]:
        asked.append(text)
        return answers[text]

    result = attribute_query_hit_rate(_attribute_catalog(tmp_path), query_fn, k=2)
    assert sorted(asked) == sorted(answers)
    assert result["n_queries"] == 4 and result["k"] == 2
    assert result["hit_rate"] == pytest.approx(2 / 4)  # red mug (5) and blue mug (3); blue hat's 4 is 3rd
    assert result["precision"] == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert result["colour_precision"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert result["category_precision"] == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)
    hits = {q["query"]: q["hit"] for q in result["per_query"]}
    assert hits == {"a red mug": True, "a red hat": False, "a blue mug": True, "a blue hat": False}
    red_mug = next(q for q in result["per_query"] if q["query"] == "a red mug")
    assert red_mug["chance_hit"] == pytest.approx(1 - 3 / 10)  # 2 of 5 items relevant: 1 - C(3,2)/C(5,2)


def test_attribute_hit_rate_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in"):
        attribute_query_hit_rate(_attribute_catalog(tmp_path), lambda text: ["99"])
    (tmp_path / "plain.csv").write_text("item_id,text,image\n1,a mug,\n")
    with pytest.raises(DataError, match="colour"):
        attribute_query_hit_rate(tmp_path / "plain.csv", lambda text: ["1"])



def test_small_catalog_adapts_the_batch_and_reports_chance(tmp_path: Path) -> None:
    from test_engine import make_shop

    catalog, _ = make_shop(tmp_path / "shop", n_items=45)  # 29 items with both an image and a text
    record = finetune_clip(catalog, tmp_path / "m.pt", model_name=TINY, epochs=2, seed=0, device="cpu")
    n_eval, n_train = record["n_eval_pairs"], record["n_train_pairs"]
    assert n_eval + n_train == 29 and n_eval == eval_size(29) == 5
    assert record["batch_size_requested"] == 32 and record["batch_size"] == 3 and record["steps_per_epoch"] == 8
    assert record["batch_size"] * record["steps_per_epoch"] == n_train  # no pair dropped
    assert record["chance_recall_at_1"] == pytest.approx(1 / n_eval)
    assert record["chance_recall_at_10"] == 1.0 and any("by chance" in w for w in record["warnings"])
    assert record["random_loss"] == pytest.approx(np.log(3), abs=1e-4)
    assert 0 <= record["image_feature_mean_cosine"] <= 1 and isinstance(record["failed"], list)


def test_batches_and_held_out_sizes() -> None:
    assert _spans(10, 4) == [(0, 4), (4, 8), (8, 10)] and _spans(9, 4) == [(0, 4), (4, 8)]
    assert _spans(3, 2) == [(0, 2)] and _spans(2, 2) == [(0, 2)]
    rng = np.random.default_rng(0)
    assert sorted(np.concatenate(_batches(10, 4, rng)).tolist()) == list(range(10))
    assert batch_for(450, 128) == 56 and batch_for(81, 128) == 10 and batch_for(10, 128) == 2
    assert batch_for(100_000, 32) == 32
    assert eval_size(90) == 18 and eval_size(500) == 50 and eval_size(20) == 4 and eval_size(5) == 2


class _CollapsedEncoder:
    """Every image encodes to the same vector: what the 90-pair catalog of the issue ended with."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        x = np.random.default_rng(0).normal(size=(len(texts), 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_images(self, images: list[Path]) -> np.ndarray:
        return np.tile(np.eye(8, dtype=np.float32)[:1], (len(images), 1))


def test_collapse_and_random_loss_are_failures() -> None:
    recall, cosine = _recall(_CollapsedEncoder(), ["t"] * 10, [Path("x")] * 10)
    assert cosine == pytest.approx(1.0) and recall[1] == 0.0  # ties count against the item
    reasons = failure_reasons(0.5, 16, cosine)
    assert len(reasons) == 1 and "collapsed" in reasons[0]
    reasons = failure_reasons(2.7, 16, 0.3)  # ln 16 = 2.77
    assert len(reasons) == 1 and "random level" in reasons[0]
    assert failure_reasons(1.0, 16, 0.5) == []


def test_cli_refuses_to_recommend_a_failed_encoder(tmp_path: Path, monkeypatch, capsys) -> None:
    import retrieval.encode.finetune as finetune
    from ui.cli import main

    record = {"n_eval_pairs": 9, "eval_recall_at_1": 0.1, "chance_recall_at_1": 0.111, "eval_recall_at_10": 1.0,
              "chance_recall_at_10": 1.0, "batch_size": 10, "steps_per_epoch": 8, "warnings": ["w"],
              "failed": failure_reasons(2.3, 10, 1.0)}
    monkeypatch.setattr(finetune, "finetune_clip", lambda *a, **k: record)
    code = main(["finetune-encoder", "--catalog", "c.csv", "--out", str(tmp_path / "e.pt"), "--threads", "1"])
    out = capsys.readouterr()
    assert code == 1 and "FAILED" in out.err and "collapsed" in out.err and "random level" in out.err
    assert "use it with" not in out.out and "chance 1.000" in out.out


def test_finetune_help_shows_the_defaults_the_code_uses(capsys) -> None:
    from retrieval.defaults import SCRATCH_LR
    from ui.cli import main

    with pytest.raises(SystemExit):
        main(["finetune-encoder", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {SCRATCH_LR:g} from scratch" in text and "--threads" in text
    assert inspect.signature(finetune_clip).parameters["lr"].default is None


def test_weak_figures() -> None:
    assert weak_figures({1: 0.56, 10: 0.94}, {1: 0.0625, 10: 0.625}, 16) == []
    near = weak_figures({1: 0.1, 10: 0.6}, {1: 0.05, 10: 0.5}, 20)
    assert len(near) == 2 and all("near chance" in w for w in near)
    assert any("by chance" in w for w in weak_figures({1: 0.4, 10: 1.0}, {1: 0.2, 10: 1.0}, 5))
