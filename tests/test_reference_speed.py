"""benchmarks/reference_speed.py: the reference code's data export, its launch and the reading of its log.

The reference code itself is not part of the project; a stand-in ``main.py`` plays its part here: it logs
epoch times in the reference's format, and records the threads and the data it was given."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from benchmarks import reference_speed, train_speed
from dgmrec_core.mmrec import load_mmrec
from tests.conftest import make_toy_dataset

# A stand-in for the reference's src folder: reads the config override as the reference does, writes a
# log named as the reference names it, and one JSON line of what it saw.
FAKE_MAIN = textwrap.dedent('''
    import argparse, json, os, sys, time, torch
    p = argparse.ArgumentParser()
    p.add_argument("--model"); p.add_argument("--dataset"); p.add_argument("--missing_modal")
    p.add_argument("--new_items"); p.add_argument("--config_override")
    a = p.parse_args()
    cfg = json.loads(a.config_override)
    if os.environ.get("FAKE_FAIL"):
        print("no such file: " + cfg["data_path"]); sys.exit(1)
    os.makedirs("log/DGMRec", exist_ok=True)
    with open(f"log/DGMRec/DGMRec-{a.dataset}-Dec-04.log", "w") as f:
        f.write("train_batch_size=4096\\n")
        for e, t in zip(range(cfg["epochs"]), [9.0, 2.0, 4.0, 3.0]):
            f.write(f"Fri 04 Dec 2026 INFO epoch {e} training [time: {t:.2f}s, train loss: 1.0]\\n")
    cuda_safe = torch.nn.Module().cuda() is not None
    print(json.dumps({"threads": torch.get_num_threads(), "cfg": cfg, "cuda_safe": cuda_safe}))
''')


@pytest.fixture
def fake_reference(tmp_path):
    src = tmp_path / "DGMRec" / "src"
    (src / "configs").mkdir(parents=True)
    (src / "configs" / "overall.yaml").write_text("epochs: 500\n")
    (src / "main.py").write_text(FAKE_MAIN)
    return src


def test_export_is_the_mmrec_layout_this_project_reads_back(tmp_path) -> None:
    dataset = make_toy_dataset()
    reference_speed.export_mmrec(dataset, tmp_path / "toy", "toy")
    back = load_mmrec(tmp_path / "toy", name="toy")
    assert np.array_equal(back.observed, dataset.observed)
    for split in ("train", "valid", "test"):
        assert np.array_equal(getattr(back.interactions, split), getattr(dataset.interactions, split))
    for mine, theirs in zip(dataset.modalities, back.modalities):
        assert np.array_equal(mine.values, theirs.values)
    mask = np.load(tmp_path / "toy" / "missing_items_0.666.npy", allow_pickle=True).item()  # written by us
    image, text = ~dataset.observed[:, 0], ~dataset.observed[:, 1]
    assert set(mask) == {"v", "t", "all"}
    assert np.array_equal(mask["all"], np.flatnonzero(image & text))
    assert np.array_equal(mask["v"], np.flatnonzero(image & ~text))


def test_epoch_times_are_read_in_epoch_order() -> None:
    text = ("x INFO epoch 1 training [time: 2.50s, train loss: 3]\n"
            "x INFO epoch 0 training [time: 10.00s, train loss: 4]\n"
            "x INFO epoch 1 evaluating [time: 0.13s, valid_score: 0.04]\n")
    assert reference_speed.epoch_times(text) == [10.0, 2.5]


def test_a_run_takes_the_median_of_the_epochs_after_the_first(fake_reference, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(reference_speed, "scenario_data", lambda name, seed=0: make_toy_dataset())
    record = reference_speed.measure(fake_reference, "ml100k", threads=1, epochs=4, work=tmp_path / "work")
    assert record["epoch_s"] == [9.0, 2.0, 4.0, 3.0]
    assert record["sec_per_epoch"] == 3.0  # epochs 2-4; the first (9 s) is left out
    assert (record["mode"], record["dataset"], record["threads"]) == ("reference-code", "ml100k", 1)
    assert record["batch_size"] == 4096  # the reference's own, from its log
    assert (tmp_path / "work" / "ml100k" / "ml100k" / "ml100k.inter").is_file()
    assert not list((tmp_path / "work" / "ml100k").glob(".*partial*"))


def test_the_launch_sets_threads_data_and_cpu(fake_reference, tmp_path, monkeypatch) -> None:
    """What the reference is given: the thread count, the exported folder, the epochs, a CPU run; and
    Module.cuda() does not fail where there is no CUDA."""
    seen = []
    real_run = reference_speed.subprocess.run

    def spy(cmd, **kw):
        proc = real_run(cmd, **kw)
        seen.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        return proc

    monkeypatch.setattr(reference_speed.subprocess, "run", spy)
    reference_speed.run_reference(fake_reference, tmp_path / "work", "baby", threads=2, epochs=3)
    assert seen[0]["threads"] == 2 and seen[0]["cuda_safe"]
    cfg = seen[0]["cfg"]
    assert cfg["epochs"] == 3 and cfg["use_gpu"] is False
    assert cfg["data_path"] == f"{tmp_path / 'work'}/" and cfg["inter_file_name"] == "baby.inter"


def test_a_failed_reference_run_says_so_with_its_output(fake_reference, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(SystemExit, match="(?s)failed.*no such file"):
        reference_speed.run_reference(fake_reference, tmp_path, "baby", threads=1, epochs=2)


def test_not_a_reference_folder_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(SystemExit, match=f"--reference-src {tmp_path}"):
        reference_speed.run_reference(tmp_path, tmp_path, "baby", threads=1, epochs=2)


def test_train_speed_ratio_names_its_reference(fake_reference, monkeypatch) -> None:
    """Without --reference-src the ratio is against issue 13's figure, and says so; with it, against the
    run just made; a GPU run gets none."""
    args = argparse.Namespace(device="cpu", reference_src=None, reference_python=sys.executable, epochs=4,
                              seed=0, no_save=True)
    assert train_speed.reference_figure(args, "ml100k", 2) == (9.36, "issue 13's table (another machine)")
    assert train_speed.reference_figure(argparse.Namespace(**{**vars(args), "device": "cuda"}), "ml100k", 2) \
        == (None, None)
    monkeypatch.setattr(reference_speed, "scenario_data", lambda name, seed=0: make_toy_dataset())
    monkeypatch.setattr(reference_speed, "WORK", fake_reference.parent / "work")
    args.reference_src = fake_reference
    assert train_speed.reference_figure(args, "baby", 1) == (3.0, "same run")


def test_records_name_the_allocator_and_batch_size_and_differ_by_them(tmp_path, monkeypatch) -> None:
    """The reference's time halves on this VM when glibc keeps freed memory: a record says which allocator
    settings were in force, and a run under other settings or another batch size adds a record, not a
    replacement."""
    from benchmarks.scale_records import merge_records

    for key in [k for k in list(os.environ) if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    assert reference_speed.allocator() == "glibc default"
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert reference_speed.allocator() == "MALLOC_MMAP_MAX_=0"
    base = {"kind": "training", "benchmark": "b", "dataset": "ml100k", "mode": "reference-code", "threads": 2,
            "processes": 1, "seed": 0, "device": "cpu", "sec_per_epoch": 21.85}
    path = tmp_path / "scale.json"
    merge_records([base], path)  # an older record: no allocator, no batch size (the defaults)
    merge_records([{**base, "allocator": "MALLOC_MMAP_MAX_=0", "sec_per_epoch": 10.25}], path)
    merge_records([{**base, "batch_size": 4096, "sec_per_epoch": 2.0}], path)
    assert sorted(r["sec_per_epoch"] for r in json.loads(path.read_text())) == [2.0, 10.25, 21.85]
    merge_records([{**base, "allocator": "glibc default", "batch_size": 2048, "sec_per_epoch": 22.0}], path)
    assert sorted(r["sec_per_epoch"] for r in json.loads(path.read_text())) == [2.0, 10.25, 22.0]


def test_every_mode_builds_its_config() -> None:
    """Each train_speed mode is a valid config; the modes are float32 unless they name bfloat16."""
    for mode, options in train_speed.MODES.items():
        config = train_speed.mode_config(mode, seed=3, batch_size=1024)
        assert (config.seed, config.batch_size) == (3, 1024)
        assert all(getattr(config, key) == value for key, value in options.items()), mode
        assert config.feature_precision == options.get("feature_precision", "float32"), mode
    assert train_speed.mode_config("paper-exact", 0).batch_size == train_speed.DGMRecConfig().batch_size
