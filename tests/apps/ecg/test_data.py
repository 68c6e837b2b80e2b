"""Loader, header parsing, lead selection, resampling and bad-input handling on real records."""
from __future__ import annotations

import numpy as np
import pytest

from apps.ecg.data import (LEAD_SETS, LEADS_12, crop_or_pad, find_records, load_records, parse_leads,
                           preprocess, read_record, resample, windows)
from apps.ecg.labels import LabelSpace
from core.engine import UserError

from .conftest import copy_record, load_val


def test_finds_all_50_records(sample_dir):
    recs = find_records([sample_dir])
    assert len(recs) == 50
    assert recs[0].name == "E07500"


def test_reads_millivolts_and_header_fields(sample_dir):
    r = read_record(sample_dir / "E07500.hea")
    val = load_val(sample_dir, "E07500")
    assert r.signal.shape == (12, 5000) and r.header.fs == 500
    # gain 1000/mV, baseline 0
    np.testing.assert_allclose(r.signal, val / 1000.0, atol=1e-6)
    assert r.header.dx == ["67741000119109", "426177001"]
    assert r.header.age == 78 and r.header.sex == "Male"


def test_dx_without_space_and_baseline(sample_dir, tmp_path):
    def edit(lines):
        out = [l.replace("# Dx:", "#Dx:") for l in lines]
        # baseline 10 on lead I: "... 1000.0(10)/mV ..."
        out[1] = out[1].replace("1000.0(0)/mV", "1000.0(10)/mV")
        return out
    p = copy_record(sample_dir, "E07500", tmp_path, edit=edit)
    r = read_record(p)
    assert r.header.dx == ["67741000119109", "426177001"]
    val = load_val(sample_dir, "E07500")
    np.testing.assert_allclose(r.signal[0], (val[0] - 10) / 1000.0, atol=1e-6)


def test_leads_selected_by_name_in_any_order(sample_dir, tmp_path):
    val = load_val(sample_dir, "HR06000")
    def edit(lines):
        return [lines[0]] + lines[1:13][::-1] + lines[13:]
    p = copy_record(sample_dir, "HR06000", tmp_path, edit=edit, val=val[::-1].copy())
    a = read_record(sample_dir / "HR06000", LEAD_SETS[4])
    b = read_record(p, LEAD_SETS[4])
    assert b.leads == ("I", "II", "III", "V2")
    np.testing.assert_allclose(a.signal, b.signal)
    np.testing.assert_allclose(a.signal[3], val[7] / 1000.0, atol=1e-6)  # V2 is row 7


def test_parse_leads():
    assert parse_leads(12) == LEADS_12
    assert parse_leads("2") == ("I", "II")
    assert parse_leads("avr, ii") == ("aVR", "II")
    with pytest.raises(UserError):
        parse_leads(5)
    with pytest.raises(UserError):
        parse_leads("I,X9")


def test_ordinary_wfdb_dat_files(sample_dir, tmp_path):
    import wfdb

    r = read_record(sample_dir / "JS20000")
    wfdb.wrsamp("DAT1", fs=500, units=["mV"] * 12, sig_name=list(LEADS_12), p_signal=r.signal.T.astype(np.float64),
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path),
                comments=["Age: 60", "Sex: Female", "Dx: 426783006"])
    d = read_record(tmp_path / "DAT1")
    np.testing.assert_allclose(d.signal, r.signal, atol=1e-3)
    assert d.header.dx == ["426783006"]


def test_resample_257_and_1000_hz():
    fs = 257.0
    t = np.arange(int(fs * 10)) / fs
    x = np.sin(2 * np.pi * 5 * t)[None].astype(np.float32)
    y = resample(x, fs, 500.0)
    assert y.shape[-1] == 5000
    t2 = np.arange(5000) / 500.0
    np.testing.assert_allclose(y[0, 200:-200], np.sin(2 * np.pi * 5 * t2)[200:-200], atol=0.02)
    z = resample(np.ones((2, 10000), np.float32), 1000.0, 500.0)
    assert z.shape == (2, 5000)


def test_preprocess_normalises_each_lead(sample_dir):
    x = preprocess(read_record(sample_dir / "E07501"), fs=250.0)
    assert x.shape == (12, 2500) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(1), 1, atol=1e-3)


def test_crop_pad_and_windows():
    x = np.arange(10, dtype=np.float32)[None]
    assert crop_or_pad(x, 4).tolist() == [[3, 4, 5, 6]]
    assert crop_or_pad(x, 12)[0, 10:].tolist() == [0, 0]
    w, s = windows(x, 4)
    assert s.tolist() == [0, 4, 6] and w[-1, 0].tolist() == [6, 7, 8, 9]
    w, s = windows(x, 20)
    assert w.shape == (1, 1, 20)


def test_labels_from_headers(sample_dir):
    recs = find_records([sample_dir])
    s, space = load_records(recs[:10], LEADS_12, 500.0, LabelSpace.scored())
    assert s.labels.shape == (10, 26) and not s.failures
    # E07500: 426177001 (SB) scored, 67741000119109 (LAE) not
    assert s.labels[0].sum() == 1 and s.labels[0, space.classes.index("426177001")] == 1
    s_all, space_all = load_records(recs[:10], LEADS_12, 500.0, None)
    assert "67741000119109" in space_all.classes and s_all.labels[0].sum() == 2


# ---- bad input: one line naming the record and the problem -------------------------------------

def _err(path, **kw) -> str:
    with pytest.raises(UserError) as e:
        read_record(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_mat(sample_dir, tmp_path):
    p = copy_record(sample_dir, "E07500", tmp_path, name="NOMAT")
    (tmp_path / "NOMAT.mat").unlink()
    msg = _err(p)
    assert "NOMAT" in msg and "missing" in msg


def test_unreadable_mat(sample_dir, tmp_path):
    p = copy_record(sample_dir, "E07500", tmp_path, name="BADMAT")
    (tmp_path / "BADMAT.mat").write_bytes(b"not a matlab file at all")
    msg = _err(p)
    assert "BADMAT" in msg and "unreadable" in msg


def test_header_signal_length_mismatch(sample_dir, tmp_path):
    val = load_val(sample_dir, "E07500")[:, :4000].copy()
    p = copy_record(sample_dir, "E07500", tmp_path, name="SHORT", val=val)
    msg = _err(p)
    assert "SHORT" in msg and "5000" in msg and "4000" in msg


def test_header_signal_lead_mismatch(sample_dir, tmp_path):
    val = load_val(sample_dir, "E07500")[:11].copy()
    p = copy_record(sample_dir, "E07500", tmp_path, name="ELEVEN", val=val)
    msg = _err(p)
    assert "ELEVEN" in msg and "12 leads" in msg and "11" in msg


def test_non_finite_samples(sample_dir, tmp_path):
    val = load_val(sample_dir, "E07500").astype(np.float64)
    val[3, 100:110] = np.nan
    p = copy_record(sample_dir, "E07500", tmp_path, name="NAN", val=val)
    msg = _err(p)
    assert "NAN" in msg and "non-finite" in msg and "aVR" in msg


def test_unknown_lead_name(sample_dir, tmp_path):
    def edit(lines):
        lines[12] = lines[12].rsplit(" ", 1)[0] + " V7"
        return lines
    p = copy_record(sample_dir, "E07500", tmp_path, name="V7LEAD", edit=edit)
    msg = _err(p)
    assert "V7LEAD" in msg and "unknown lead name 'V7'" in msg


def test_zero_length(sample_dir, tmp_path):
    def edit(lines):
        lines[0] = "ZERO 12 500 0"
        return lines
    p = copy_record(sample_dir, "E07500", tmp_path, name="ZERO", edit=edit,
                    val=np.zeros((12, 0), dtype=np.int16))
    msg = _err(p)
    assert "ZERO" in msg and "zero-length" in msg


def test_unsupported_rate(sample_dir, tmp_path):
    def edit(lines):
        lines[0] = "SLOW 12 20 5000"
        return lines
    p = copy_record(sample_dir, "E07500", tmp_path, name="SLOW", edit=edit)
    msg = _err(p)
    assert "SLOW" in msg and "sampling rate 20" in msg


def test_missing_leads_for_model(sample_dir, tmp_path):
    val = load_val(sample_dir, "E07500")[:2].copy()
    def edit(lines):
        lines[0] = "TWO 2 500 5000"
        return lines[:3] + lines[13:]
    p = copy_record(sample_dir, "E07500", tmp_path, name="TWO", edit=edit, val=val)
    assert read_record(p, LEAD_SETS[2]).signal.shape == (2, 5000)
    msg = _err(p, leads=LEAD_SETS[3])
    assert "TWO" in msg and "V2" in msg


def test_load_records_skips_and_lists_failures(sample_dir, tmp_path):
    good = copy_record(sample_dir, "E07500", tmp_path)
    bad = copy_record(sample_dir, "E07501", tmp_path)
    (tmp_path / "E07501.mat").unlink()
    s, _ = load_records([good, bad], LEADS_12, 500.0, LabelSpace.scored())
    assert s.ids == ["E07500"] and len(s.failures) == 1 and "E07501" in s.failures[0]
