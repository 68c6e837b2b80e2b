"""Lazy data loading (``data_loading=lazy``): header scan, read-on-demand datasets equal to the
in-memory ones, per-worker random streams, bad records, and a short lazy training run."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from apps.ecg.cli import main
from apps.ecg.data import LEADS_12, WindowDataset, find_records, load_records
from apps.ecg.dataset import (AUTO_LAZY_ABOVE, RecordReadError, record_signals, resolve_data_loading,
                              scan_records, split_by_record, window_dataset)
from apps.ecg.labels import LabelSpace
from apps.ecg.model import model_config
from apps.ecg.train import DEFAULTS, ECGModule, _loaders, resolve_config
from core.engine import UserError

from .conftest import copy_record, load_val

FS, WINDOW = 250.0, 1000  # 4 s windows of the 10 s records, so training crops are random


@pytest.fixture(scope="module")
def both(sample_dir):
    paths = find_records([sample_dir])
    mem, space_m = load_records(paths, LEADS_12, FS, LabelSpace.scored())
    lazy, space_l = scan_records(paths, LEADS_12, FS, LabelSpace.scored())
    assert space_m.classes == space_l.classes
    return mem, lazy


def test_scan_gives_the_same_records_labels_and_split(both, sample_dir):
    mem, lazy = both
    assert lazy.ids == mem.ids and len(lazy.ids) == 50 and not lazy.failures
    assert lazy.dx == mem.dx
    np.testing.assert_array_equal(lazy.labels, mem.labels)
    # labels=all builds the label space from the headers alone
    paths = find_records([sample_dir])[:10]
    _, all_m = load_records(paths, LEADS_12, FS, None)
    _, all_l = scan_records(paths, LEADS_12, FS, None)
    assert all_l.classes == all_m.classes
    for a, b in zip(split_by_record(len(mem.ids), 0.2, 0), split_by_record(len(lazy.ids), 0.2, 0)):
        np.testing.assert_array_equal(a, b)


def test_lazy_items_and_batches_equal_the_in_memory_ones(both):
    mem, lazy = both
    tr, va = split_by_record(len(mem.ids), 0.2, 0)
    # validation (centre) crops, item by item
    va_m, va_l = window_dataset(mem, va, WINDOW, train=False), window_dataset(lazy, va, WINDOW, train=False)
    assert type(va_l).__name__ == "LazyWindowDataset" and len(va_l) == len(va_m) == 10
    for i in range(len(va_m)):
        (xm, ym), (xl, yl) = va_m[i], va_l[i]
        assert torch.equal(xm, xl) and torch.equal(ym, yl)
    # training loaders as train() builds them: identical batches (random crops, gains, order), two epochs
    dl_m, _ = _loaders(mem, tr, va, WINDOW, 8, seed=3, num_workers=0)
    dl_l, _ = _loaders(lazy, tr, va, WINDOW, 8, seed=3, num_workers=0)
    for _ in range(2):
        batches_m, batches_l = list(dl_m), list(dl_l)  # each run to its end, as Lightning does
        assert len(batches_m) == len(batches_l) == 5
        for (xm, ym), (xl, yl) in zip(batches_m, batches_l):
            assert xm.shape == (8, 12, WINDOW)
            assert torch.equal(xm, xl) and torch.equal(ym, yl)


def test_whole_records_stream_in_order(both):
    from apps.ecg.infer import predict_signals

    mem, lazy = both
    va = [7, 3, 40]
    for workers in (0, 2):  # workers read ahead, the order stays that of va
        streamed = list(record_signals(lazy, va, num_workers=workers))
        assert len(streamed) == len(va)
        for i, s in zip(va, streamed):
            np.testing.assert_array_equal(s, mem.signals[i])
    torch.manual_seed(0)
    module = ECGModule(LabelSpace.scored().classes, LEADS_12, fs=FS, window_s=4.0,
                       model=model_config("tiny")).eval()
    p_list, per_list = predict_signals(module, [mem.signals[i] for i in va])
    p_gen, per_gen = predict_signals(module, record_signals(lazy, va))  # a generator, read as consumed
    np.testing.assert_array_equal(p_list, p_gen)
    assert [s.tolist() for s, _ in per_list] == [s.tolist() for s, _ in per_gen] == [[0, 1000, 1500]] * 3


def _crop_starts(seed: int, num_workers: int) -> list:
    # eight copies of a ramp: a crop's first value is its start sample
    ramp = np.tile(np.arange(100, dtype=np.float32), (1, 1))
    ds = WindowDataset([ramp] * 8, np.zeros((8, 1), np.float32), length=10, train=True, seed=seed)
    dl = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=num_workers,
                                     generator=torch.Generator().manual_seed(seed))
    # undo the random gain using the second sample: start = x0 / (x1 - x0)
    return [round(float(x[0, 0, 0] / (x[0, 0, 1] - x[0, 0, 0]))) for x, _ in dl]


def test_each_worker_draws_its_own_random_crops():
    single = _crop_starts(0, num_workers=0)
    assert single == _crop_starts(0, num_workers=0)     # --seed reproduces the main-process stream
    workers = _crop_starts(0, num_workers=2)
    # items 0, 1 go to workers 0, 1: a copied generator would give both the same crop
    assert workers[0] != workers[1] or workers[2] != workers[3]
    assert workers == _crop_starts(0, num_workers=2)    # and the workers' streams are seeded too


# ---- bad records ---------------------------------------------------------------------------------

def test_scan_skips_records_whose_signal_files_are_bad(sample_dir, tmp_path):
    import wfdb

    src = tmp_path / "in"
    copy_record(sample_dir, "E07500", src)
    copy_record(sample_dir, "E07501", src, name="NOMAT")
    (src / "NOMAT.mat").unlink()
    copy_record(sample_dir, "E07502", src, name="CUTMAT")
    data = (src / "CUTMAT.mat").read_bytes()
    (src / "CUTMAT.mat").write_bytes(data[:len(data) // 2])
    copy_record(sample_dir, "E07503", src, name="ELEVEN", val=load_val(sample_dir, "E07503")[:11].copy())
    copy_record(sample_dir, "E07504", src, name="GARBAGE")
    (src / "GARBAGE.mat").write_bytes(b"not a matlab file at all")
    sig = np.zeros((500, 2))
    wfdb.wrsamp("CUTDAT", fs=500, units=["mV"] * 2, sig_name=["I", "II"], p_signal=sig, fmt=["16"] * 2,
                adc_gain=[1000.0] * 2, baseline=[0] * 2, write_dir=str(src), comments=["Dx: 426783006"])
    (src / "CUTDAT.dat").write_bytes((src / "CUTDAT.dat").read_bytes()[:1000])
    wfdb.wrsamp("OKDAT", fs=500, units=["mV"] * 2, sig_name=["I", "II"], p_signal=sig, fmt=["212"] * 2,
                adc_gain=[1000.0] * 2, baseline=[0] * 2, write_dir=str(src), comments=["Dx: 426783006"])

    index, _ = scan_records(find_records([src]), ("I", "II"), FS, LabelSpace.scored())
    assert index.ids == ["E07500", "OKDAT"]
    msgs = {m.split(":")[0].rsplit("/", 1)[-1].split(".")[0]: m for m in index.failures}
    assert sorted(msgs) == ["CUTDAT", "CUTMAT", "ELEVEN", "GARBAGE", "NOMAT"]
    assert all("\n" not in m for m in index.failures)
    assert "missing" in msgs["NOMAT"] and "truncated" in msgs["CUTMAT"] and "truncated" in msgs["CUTDAT"]
    assert "12 leads" in msgs["ELEVEN"] and "unreadable" in msgs["GARBAGE"]
    # the same checks as reading: a lead the model needs
    index, _ = scan_records(find_records([src]), LEADS_12, FS, LabelSpace.scored())
    assert index.ids == ["E07500"] and any("OKDAT" in m and "lacks lead" in m for m in index.failures)


def _nan_record(sample_dir, dst):
    val = load_val(sample_dir, "E07505").astype(np.float64)  # float samples: only reading finds the NaN
    val[2, 100:110] = np.nan
    return copy_record(sample_dir, "E07505", dst, name="NANREC", val=val)


def test_record_unreadable_after_the_scan_raises_one_line(sample_dir, tmp_path):
    copy_record(sample_dir, "E07500", tmp_path)
    _nan_record(sample_dir, tmp_path)
    index, _ = scan_records(find_records([tmp_path]), LEADS_12, FS, LabelSpace.scored())
    assert index.ids == ["E07500", "NANREC"]  # size and shape are right
    ds = window_dataset(index, [0, 1], WINDOW, train=True)
    assert ds[0][0].shape == (12, WINDOW)
    with pytest.raises(RecordReadError) as e:
        ds[1]
    msg = str(e.value)
    assert "NANREC" in msg and "non-finite" in msg and "\n" not in msg
    # through a DataLoader worker it is still the same one-line UserError
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    with pytest.raises(UserError) as e:
        next(iter(dl))
    assert str(e.value) == msg


def test_data_loading_option():
    assert DEFAULTS["data_loading"] == "auto"
    assert resolve_data_loading("auto", AUTO_LAZY_ABOVE) == "memory"
    assert resolve_data_loading("auto", AUTO_LAZY_ABOVE + 1) == "lazy"
    assert resolve_data_loading("memory", 10 ** 6) == "memory" and resolve_data_loading("lazy", 2) == "lazy"
    with pytest.raises(UserError, match="data_loading"):
        resolve_config({**DEFAULTS, "data_loading": "stream"})


# ---- training end to end -------------------------------------------------------------------------

TINY = ["--preset", "tiny", "--fs", "100", "--window-s", "4", "--batch-size", "8", "--lr", "3e-3",
        "--seed", "0", "--accelerator", "cpu", "--data-loading", "lazy"]


def test_lazy_training_run_lowers_the_loss_and_skips_bad_records(sample_dir, tmp_path, capsys):
    src = tmp_path / "in"
    for rec in find_records([sample_dir])[:12]:
        copy_record(sample_dir, rec.name, src)
    copy_record(sample_dir, "JS20000", src, name="CUT")
    (src / "CUT.mat").write_bytes((src / "CUT.mat").read_bytes()[:5000])
    out = tmp_path / "run"
    assert main(["train", "--data", str(src), "--out", str(out), "--max-epochs", "6"] + TINY) == 0
    assert (out / "checkpoints" / "best.ckpt").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert m["data_loading"] == "lazy" and m["n_records"] == 12 and m["n_val"] == 2 and m["n_skipped"] == 1
    assert "CUT" in (out / "skipped.txt").read_text()
    with open(out / "logs" / "metrics.csv") as f:
        losses = [float(r["train_loss_epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")]
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0]


def test_lazy_training_stops_with_one_line_on_an_unreadable_record(sample_dir, tmp_path, capsys):
    src = tmp_path / "in"
    for rec in find_records([sample_dir])[:3]:
        copy_record(sample_dir, rec.name, src)
    _nan_record(sample_dir, src)
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(src), "--out", str(tmp_path / "run"), "--max-epochs", "1"] + TINY)
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("scanning headers")]
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and "NANREC" in err[0] and "non-finite" in err[0]
