"""One checkpoint for every Challenge lead set (lead masking), and the parallel header scan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.ecg.data import LEAD_SETS, LEADS_12, find_records, parse_leads

from .conftest import copy_record, load_val, run


def _subset_copy(src, rec, dst, name, keep):
    """A copy of ``rec`` holding only the leads ``keep`` (header lines and signal rows)."""
    rows = [LEADS_12.index(lead) for lead in keep]

    def edit(lines):
        first = lines[0].split()
        first[1] = str(len(rows))
        sig = [lines[1 + i] for i in rows]
        return [" ".join(first)] + sig + lines[13:]

    return copy_record(src, rec, dst, name, edit=edit, val=load_val(src, rec)[rows])


def test_trained_lead_sets():
    from apps.ecg.train import trained_lead_sets

    sets = trained_lead_sets(LEADS_12, True)
    assert [len(s) for s in sets] == [12, 6, 4, 3, 2] and sets[-1] == ["I", "II"]
    assert [len(s) for s in trained_lead_sets(LEAD_SETS[6], True)] == [6, 2]
    assert trained_lead_sets(LEADS_12, False) is None and trained_lead_sets(("I", "II"), True) is None


def test_masked_module_reads_presence():
    from apps.ecg.model import model_config
    from apps.ecg.train import ECGModule, trained_lead_sets

    torch.manual_seed(0)
    m = ECGModule(["164889003", "426783006"], LEADS_12, fs=100.0, window_s=2.0, model=model_config("tiny"),
                  lead_sets=trained_lead_sets(LEADS_12, True)).eval()
    assert m.net.stem.net[0].in_channels == 24          # 12 leads + 12 presence channels
    x = torch.randn(2, 12, 200)
    x6 = x * m.set_keep[1][None, :, None]               # the 6-lead set: V1-V6 absent
    with torch.no_grad():
        # an absent lead is not just a zero signal: the presence channels change the output
        direct = m.net(torch.cat([x6, torch.ones_like(x6)], 1))
        assert not torch.allclose(m(x6), direct)
        present = (m.set_keep[1][None, :, None]).expand_as(x6)
        assert torch.allclose(m(x6), m.net(torch.cat([x6, present], 1)))
    assert m.thresholds_for(LEAD_SETS[2]).shape == (2,)
    with pytest.raises(Exception, match="not a lead set"):
        m.set_index(("I", "V1"))


def test_one_checkpoint_any_lead_set(trained, sample_dir, tmp_path, capsys):
    """The default model (trained with lead masking) classifies 12-, 6- and 2-lead records, names the
    leads it used, and refuses in one line a record with too few leads."""
    src = tmp_path / "in"
    copy_record(sample_dir, "E07500", src, "R12")
    _subset_copy(sample_dir, "E07501", src, "R6", LEAD_SETS[6])
    _subset_copy(sample_dir, "E07502", src, "R2", ("II", "I"))        # any header order
    _subset_copy(sample_dir, "E07503", src, "BAD", ("I", "V1"))
    rc, out, err = run(["predict", "--checkpoint", str(trained), "-i", str(src), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2
    bad = [line for line in err.splitlines() if "BAD" in line]
    assert len(bad) == 1 and "too few for the model" in bad[0] and "I,II" in bad[0]
    assert "12 leads: 1 records" in out and "6 leads (I,II,III,aVR,aVL,aVF): 1 records" in out
    rows = {r.split(",")[0]: r.split(",")[-1] for r in (tmp_path / "o" / "summary.csv").read_text().splitlines()[1:]}
    assert rows == {"R12": " ".join(LEADS_12), "R6": "I II III aVR aVL aVF", "R2": "I II"}

    # the 6-lead file gives what the 12-lead original gives when its other leads are zero-filled
    from apps.ecg.infer import load_checkpoint
    from apps.ecg.data import fill_leads, preprocess, read_record
    from apps.ecg.infer import predict_signals, read_challenge_csv

    module = load_checkpoint(str(trained))
    rec = read_record(sample_dir / "E07501", LEAD_SETS[6])
    x = fill_leads(preprocess(rec, module.hparams.fs, tuple(module.hparams.band_hz)), LEAD_SETS[6], LEADS_12)
    p, _ = predict_signals(module, [x])
    _, _, _, p_file = read_challenge_csv(tmp_path / "o" / "R6.csv")
    assert np.allclose(p[0], p_file, atol=1e-4)


def test_evaluate_per_lead_set(trained, sample_dir, tmp_path, capsys):
    rc, out, _ = run(["evaluate", "--checkpoint", str(trained), "--data", str(sample_dir), "--leads", "2",
                      "--out", str(tmp_path / "m2.json")], capsys)
    assert rc == 0 and "2 leads (I,II): 50 records" in out
    rc, out, _ = run(["evaluate", "--checkpoint", str(trained), "--data", str(sample_dir), "--leads", "I,V1",
                      "--out", str(tmp_path / "mx.json")], capsys)
    assert rc == 2 and "not a lead set" in out + _


def test_parallel_scan_same_index(sample_dir, tmp_path):
    from apps.ecg.dataset import scan_records
    from apps.ecg.labels import LabelSpace

    src = tmp_path / "recs"
    for i, rec in enumerate(["E07500", "E07501", "E07502", "E07503", "E07504", "E07505"]):
        copy_record(sample_dir, rec, src, f"A{i}")
    (src / "A3.mat").write_bytes(b"junk")                                 # a bad signal file
    _subset_copy(sample_dir, "E07506", src, "A6", LEAD_SETS[2])           # lacks leads
    paths = find_records([src, sample_dir])
    kw = dict(space=LabelSpace.scored())
    a, _ = scan_records(paths, LEADS_12, 500.0, **kw)
    b, _ = scan_records(paths, LEADS_12, 500.0, num_workers=2, **kw)
    assert a.ids == b.ids and a.positions == b.positions and a.failures == b.failures
    assert np.array_equal(a.labels, b.labels) and a.paths == b.paths and len(a.failures) == 2
    sets = [parse_leads(n) for n in (12, 6, 2)]
    c, _ = scan_records(paths, LEADS_12, 500.0, num_workers=2, lead_sets=sets, **kw)
    assert "A6" in c.ids and c.used_leads[c.ids.index("A6")] == ("I", "II") and len(c.failures) == 1
