"""`dgmrec train / evaluate / make-mask` end to end on small files, including bad input."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import make_toy_dataset, write_toy_files
from dgmrec_core.interactions import UnseenInTrainingWarning
from dgmrec_core.masking import load_mask
from ui.cli import main

# no generation refit after training (1,000 steps: most of a toy run), except where a test asks for it
FAST = ["--gen-refit-steps", "0", "--epochs", "2", "--batch-size", "128", "--knn-k", "5"]


@pytest.fixture()
def files(tmp_path):
    """interactions.csv + image.npy + text.npy of the toy catalog, items in sorted-id order."""
    dataset = make_toy_dataset()
    write_toy_files(tmp_path, dataset)
    return tmp_path


def _data_args(d, image="image.npy"):
    return ["--interactions", str(d / "inter.csv"), "--feature", f"image={d / image}",
            "--feature", f"text={d / 'text.npy'}", "--mask", str(d / "mask.npz")]


def test_train_then_evaluate_gives_the_same_test_metrics(files, capsys) -> None:
    assert main(["make-mask", "--items", "60", "--seed", "3", "--out", str(files / "mask.npz")]) == 0
    observed, names = load_mask(files / "mask.npz")
    assert names == ["image", "text"] and observed.shape == (60, 2) and (~observed).any()
    out = files / "run"
    assert main(["train", *_data_args(files), *FAST, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and set(metrics["test"]) >= {"recall@20", "ndcg@20", "hit@50"}
    capsys.readouterr()
    assert main(["evaluate", *_data_args(files), "--checkpoint", str(out / "model.pt"),
                 "--out", str(files / "eval.json")]) == 0
    evaluated = json.loads((files / "eval.json").read_text())
    assert evaluated["all_users"] == pytest.approx(metrics["test"])


def test_baseline_flag_trains_lightgcn(files) -> None:
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    out = files / "lgcn"
    assert main(["train", *_data_args(files), *FAST, "--baseline", "lightgcn", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["use_modalities"] is False


@pytest.mark.parametrize("case, expected", [
    ("rows", "image_bad.npy"),
    ("nan", "NaN"),
    ("columns", "item_id"),
])
def test_bad_input_is_refused_and_saved_results_stay(files, capsys, case, expected) -> None:
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    out = files / "run"
    assert main(["train", *_data_args(files), *FAST, "--out", str(out)]) == 0
    saved = (out / "model.pt").read_bytes(), (out / "metrics.json").read_bytes()
    image = np.load(files / "image.npy")
    if case == "rows":
        np.save(files / "image_bad.npy", image[:-3])
    elif case == "nan":
        image[7, 2] = np.nan
        np.save(files / "image_bad.npy", image)
    else:
        np.save(files / "image_bad.npy", image)
        (files / "inter.csv").write_text("user,item\nu1,i001\n")
    capsys.readouterr()
    assert main(["train", *_data_args(files, "image_bad.npy"), *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert ((out / "model.pt").read_bytes(), (out / "metrics.json").read_bytes()) == saved


def test_rows_of_users_never_in_training_are_dropped_with_a_warning_and_recorded(files) -> None:
    """MMRec data may hold valid/test rows of users absent from training (the reference code drops them):
    training goes on, one warning line names the file and the count, metrics.json records it."""
    dataset = make_toy_dataset()
    inter = dataset.interactions
    lines = ["user_id,item_id,split"] + [f"u{u},i{i:03d},{label}" for label, split in
                                         enumerate((inter.train, inter.valid, inter.test)) for u, i in split]
    lines += ["ghost,i001,test", "ghost,i002,valid"]
    (files / "inter.csv").write_text("\n".join(lines) + "\n")
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    out = files / "run"
    with pytest.warns(UnseenInTrainingWarning) as caught:
        assert main(["train", *_data_args(files), *FAST, "--out", str(out)]) == 0
    assert len(caught) == 1
    line = warnings.formatwarning(caught[0].message, caught[0].category, "x.py", 1)  # as the CLI prints it
    assert line.startswith("warning: ") and line.count("\n") == 1
    assert "inter.csv" in line and "dropped 2 validation/test rows (1 valid, 1 test): 1 user(s)" in line
    assert json.loads((out / "metrics.json").read_text())["dropped_unseen_rows"] == 2
