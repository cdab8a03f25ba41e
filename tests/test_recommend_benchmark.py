"""benchmarks/recommend.py: records, paired per-seed comparison, curves plot, settings."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import recommend  # noqa: E402
from validation_curves import plot_validation_curves  # noqa: E402


def record(model: str, seed: int, recall: float, setting: str = "full") -> dict:
    return {"dataset": "ml100k", "setting": setting, "model": model, "seed": seed, "recall@20": recall,
            "ndcg@20": recall / 2, "recall@50": recall * 2, "best_epoch": 6, "epochs_run": 9,
            "curve": [[3, recall - 0.01], [6, recall], [9, recall - 0.005]]}


RECORDS = [record("lightgcn", s, r) for s, r in enumerate((0.160, 0.170, 0.165))] + \
          [record("dgmrec", s, r) for s, r in enumerate((0.170, 0.181, 0.176))]


def test_paired_differences_per_seed() -> None:
    row = recommend.paired(RECORDS, "dgmrec", "lightgcn")
    assert "0: +0.0100" in row and "2: +0.0110" in row and "+0.0107 ± 0.0006" in row and row.endswith("yes |")
    assert recommend.paired(RECORDS, "dgmrec", "no-generation") is None


def test_merge_replaces_the_same_run_and_keeps_others() -> None:
    merged = recommend.merge_records(RECORDS, [record("dgmrec", 0, 0.5), record("dgmrec", 0, 0.4, "new-items")])
    assert len(merged) == len(RECORDS) + 1
    assert [r["recall@20"] for r in merged if r["model"] == "dgmrec" and r["seed"] == 0] == [0.5, 0.4]


def test_summary_and_plot(tmp_path) -> None:
    text = recommend.summary(RECORDS + [record("lightgcn", 0, 0.01, "new-items")])
    assert "### ml100k, full" in text and "### ml100k, new-items" in text and "dgmrec - lightgcn" in text
    out = plot_validation_curves(RECORDS, tmp_path / "curves.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("setting", ["full", "new-item", "sparse"])
def test_settings_on_the_real_data(shared_data, setting) -> None:
    dataset, name = recommend.load_setting(shared_data / "mmrec", "ml100k", setting, "0.666", sparse_seed=0)
    inter = dataset.interactions
    assert name == ("ml100k-sparse" if setting == "sparse" else "ml100k")
    assert (len(inter.valid) == 9_942) == (setting != "new-item")
    if setting == "new-item":
        assert not np.isin(inter.train[:, 1], dataset.new_items).any() and len(dataset.new_items) > 300
    if setting == "sparse":
        assert 0.19 < len(inter.train) / 79_619 < 0.22 and len(np.unique(inter.train[:, 0])) == 943


def test_owed_runs_lists_exactly_the_missing_cells_of_the_table() -> None:
    done = [{**record(m, s, 0.1, setting), "dataset": d, "wall_s": 600.0 * (s + 1)}
            for (d, setting) in recommend.GRID_CELLS for m in recommend.GRID_MODELS for s in recommend.GRID_SEEDS]
    assert recommend.owed_runs(done) == []
    gone = [("ml100k-sparse", "full", "no-generation", 1), ("sample-shop", "new-items", "dgmrec-paper", 0)]
    partial = [r for r in done if (r["dataset"], r["setting"], r["model"], r["seed"]) not in gone]
    partial.append({**record("dgmrec-light-chain", 0, 0.1), "wall_s": 60.0})  # outside the table: ignored
    owed = recommend.owed_runs(partial)
    assert [c for c, _ in owed] == [
        "python benchmarks/recommend.py --dataset ml100k --setting sparse --models no-generation --seeds 1 "
        "--threads 1 --out part.json",
        "python benchmarks/recommend.py --dataset sample-shop --setting new-item --models dgmrec-paper --seeds 0 "
        "--threads 1 --out part.json"]
    assert [m for _, m in owed] == [20.0, 25.0]  # the median of the cell's recorded seeds (10, 30 / 20, 30 min)
    # a cell with no recorded seed: the setting's DGMRec variants, else unknown
    lone = [{**record("dgmrec", 0, 0.1), "wall_s": 1200.0}, {**record("lightgcn", 0, 0.1), "wall_s": 60.0}]
    estimates = dict(recommend.owed_runs(lone))
    assert estimates["python benchmarks/recommend.py --dataset ml100k --setting full --models no-generation "
                     "--seeds 0 --threads 1 --out part.json"] == 20.0
    assert estimates["python benchmarks/recommend.py --dataset sample-shop --setting full --models lightgcn "
                     "--seeds 0 --threads 1 --out part.json"] is None


def test_a_run_stopped_inside_a_climb_is_owed_again() -> None:
    """A record the current stopping rule would train on further (the reference rule stopped it 26 validations
    after an early peak, the curve climbing) counts as missing; a GPU run's wall time is no estimate."""
    done = [{**record(m, s, 0.1, setting), "dataset": d, "wall_s": 600.0}
            for (d, setting) in recommend.GRID_CELLS for m in recommend.GRID_MODELS for s in recommend.GRID_SEEDS]
    climbing = [[3, 0.34]] + [[e, 0.30 + 0.0004 * e] for e in range(6, 82, 3)]
    for r in done:
        if (r["dataset"], r["model"], r["seed"]) == ("sample-shop-sparse", "dgmrec", 2):
            r.update(curve=climbing, epochs_run=81, best_epoch=3)
        if (r["dataset"], r["model"]) == ("sample-shop-sparse", "dgmrec") and r["seed"] < 2:
            r.update(device="cuda:0", wall_s=60.0)
    owed = recommend.owed_runs(done)
    assert owed == [("python benchmarks/recommend.py --dataset sample-shop --setting sparse --models dgmrec "
                     "--seeds 2 --threads 1 --out part.json   (stopped early: run again)", 10.0)]


def test_checkpoints_resume_a_run_and_give_a_finished_one_again(tmp_path, monkeypatch) -> None:
    """--checkpoints: a run saves as it validates; run again, it resumes and a finished run gives its record
    again without training (the first epochs of a cut run are not lost)."""
    from conftest import make_toy_dataset

    monkeypatch.setattr(recommend, "load_setting", lambda *args: (make_toy_dataset(), "toy"))
    out, folder = tmp_path / "r.json", tmp_path / "ckpt"
    argv = ["recommend.py", "--models", "no-generation", "--seeds", "0", "--epochs", "4", "--threads", "1",
            "--checkpoints", str(folder), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    recommend.main()
    first = recommend.read_records(out)[0]
    path = recommend.checkpoint_path(folder, "toy", "full", "no-generation", 0, 4, "0.666", 0)
    assert path.exists() and [p.name for p in folder.iterdir()] == ["toy-full-no-generation-seed0-epochs4.pt"]
    assert "resumed" not in first
    recommend.main()
    again = recommend.read_records(out)[0]
    assert again["resumed"] is True
    assert again["epochs_run"] == first["epochs_run"] == 4 and again["curve"] == first["curve"]
    assert again["recall@20"] == pytest.approx(first["recall@20"])


def test_checkpoint_names_hold_every_option_that_sets_the_run(tmp_path) -> None:
    name = recommend.checkpoint_path
    assert name(tmp_path, "ml100k", "full", "dgmrec", 2, None, "0.666", 0).name == "ml100k-full-dgmrec-seed2.pt"
    assert name(tmp_path, "ml100k-sparse", "full", "lightgcn", 0, 60, None, 3).name == \
        "ml100k-sparse-full-lightgcn-seed0-epochs60-missingnone-sparse3.pt"
    assert name(tmp_path, "ml100k", "full", "dgmrec", 0, None, "0.666", 3).name == "ml100k-full-dgmrec-seed0.pt"


def test_model_free_references_read_what_the_features_show() -> None:
    """benchmarks/content_signal.py: on the toy catalog, where users like one feature cluster, the content
    profile ranks far above chance; new items are scored by content alone and get nothing from popularity."""
    from dataclasses import replace

    import content_signal
    from conftest import make_toy_dataset
    from dgmrec_core.masking import make_new_item_split

    dataset = make_toy_dataset(missing_ratio=0.3)
    full = content_signal.measure(dataset)
    assert full["content"]["recall@20"] > 1.5 * full["chance"]["recall@20"]  # chance is high: 60 items, 20 slots
    assert 0 < full["chance"]["recall@20"] < 1 and full["popularity"]["recall@20"] > 0
    inter, new = make_new_item_split(dataset.interactions, 0.2, seed=1)
    cold = content_signal.measure(replace(dataset, interactions=inter, new_items=new))
    assert cold["popularity"]["recall@20"] == 0.0  # new items have no training interactions
    assert cold["content"]["recall@20"] > 1.5 * cold["chance"]["recall@20"]
