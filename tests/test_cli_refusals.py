"""Bad options and foreign output folders: one clear message each, no traceback, nothing overwritten."""
from __future__ import annotations

from pathlib import Path

import pytest

from dgmrec_core.config import DGMRecConfig
from dgmrec_core.errors import DataError
from retrieval.index.storage import check_bundle_target
from test_cli_train import FAST, _data_args, files  # noqa: F401 - the fixture is used by name
from ui.cli import main


def _one_error(capsys, expected: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


@pytest.mark.parametrize("options, expected", [
    ({"epochs": 0}, "epochs (--epochs) must be > 0, got 0"),
    ({"lr": -1.0}, "lr (--lr) must be > 0, got -1.0"),
    ({"batch_size": 0}, "batch_size (--batch-size) must be > 0"),
    ({"knn_k": -3}, "knn_k (--knn-k) must be > 0"),
    ({"inter_modal_temp": 0.0}, "inter_modal_temp (--inter-modal-temp) must be > 0"),
    ({"recon": -0.1}, "recon (--recon) must be >= 0"),
    ({"avg_lambda": 1.5}, "avg_lambda (--avg-lambda) must be in [0, 1]"),
    ({"epochs": "10"}, "epochs (--epochs) must be int, got '10'"),
    ({"lr": float("nan")}, "lr (--lr) must be > 0, got nan"),
])
def test_config_refuses_bad_values(options: dict, expected: str) -> None:
    with pytest.raises(DataError, match=__import__("re").escape(expected)):
        DGMRecConfig(**options)


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "0"], "epochs (--epochs) must be > 0"),
    (["--lr", "-1"], "lr (--lr) must be > 0"),
    (["--batch-size", "0"], "batch_size (--batch-size) must be > 0"),
])
def test_train_refuses_bad_options(files, capsys, flags: list[str], expected: str) -> None:  # noqa: F811
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    capsys.readouterr()
    assert main(["train", *_data_args(files), *FAST, *flags, "--out", str(files / "run")]) == 2
    _one_error(capsys, expected)
    assert not (files / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["make-mask", "--items", "60", "--ratio", "1.5", "--out", "m.npz"], "(--ratio) must be in [0, 1], got 1.5"),
    (["make-mask", "--items", "0", "--out", "m.npz"], "(--items) must be >= 1"),
    (["make-mask", "--items", "60", "--out", "."], "is a folder"),
    (["build", "c.csv", "i.csv", "--out", "."], "is the current folder or one above it"),
    (["build", "c.csv", "i.csv", "--out", ".."], "is the current folder or one above it"),
])
def test_bad_arguments_give_one_message(tmp_path: Path, monkeypatch, capsys, argv: list[str], expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_error(capsys, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_build_refuses_a_foreign_out_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    assert main(["build", "c.csv", "i.csv", "--out", str(out)]) == 2
    _one_error(capsys, "exists and is not an index (no meta.json); choose another --out, or add --force")
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        check_bundle_target(tmp_path / "file", force=True)
    check_bundle_target(out, force=True)  # allowed with --force
    check_bundle_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_bundle_target(tmp_path / "empty")


def test_train_out_refuses_foreign_folders_and_finished_runs(files, capsys) -> None:  # noqa: F811
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    foreign = files / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["train", *_data_args(files), *FAST, "--out", str(foreign)]) == 2
    _one_error(capsys, "exists and is not a training run (it holds todo.txt)")
    assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"]

    run = files / "run"
    assert main(["train", *_data_args(files), *FAST, "--out", str(run)]) == 0
    saved = (run / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", *_data_args(files), *FAST, "--out", str(run)]) == 2
    _one_error(capsys, "holds a training run already (model.pt): add --resume")
    assert (run / "model.pt").read_bytes() == saved


@pytest.mark.parametrize("flags, expected", [
    (["--lr", "0.01"], "lr: 0.001 -> 0.01"),
    (["--embedding-size", "32"], "embedding_size: 64 -> 32"),
    (["--baseline", "no-generation"], "generation: True -> False"),
])
def test_resume_with_other_settings_names_the_keys(files, capsys, flags: list[str], expected: str) -> None:  # noqa: F811
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    run = files / "run"
    assert main(["train", *_data_args(files), *FAST, "--out", str(run)]) == 0
    saved = (run / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", *_data_args(files), *FAST, *flags, "--out", str(run), "--resume"]) == 2
    _one_error(capsys, f"cannot resume with other settings than the checkpoint's: {expected}")
    assert (run / "model.pt").read_bytes() == saved
    # more epochs is a resume, not a change
    assert main(["train", *_data_args(files), *FAST[:-4], "--epochs", "3", "--batch-size", "128", "--knn-k", "5",
                 "--out", str(run), "--resume"]) == 0


@pytest.mark.parametrize("missing, expected", [
    ("both", "no item of the 6 has a text or an image"),
    ("image", "field 'image': no item of the 6 has an image"),
    ("text", "field 'text': no item of the 6 has a text"),
])
def test_build_refuses_a_catalog_without_a_modality(tmp_path: Path, capsys, missing: str, expected: str) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = ["item_id,text,image"]
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        text = "" if missing in ("both", "text") else f"thing {i}"
        image = "" if missing in ("both", "image") else f"img/{i}.png"
        rows.append(f"p{i},{text},{image}")
    (tmp_path / "cat.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id\n" + "".join(f"u{i % 2},p{i}\n" for i in range(6)))
    out = tmp_path / "idx"
    assert main(["build", str(tmp_path / "cat.csv"), str(tmp_path / "inter.csv"), "--out", str(out),
                 "--model-name", "dgmrec-tiny", "--pretrained", "none"]) == 2
    _one_error(capsys, expected)
    assert not out.exists()
