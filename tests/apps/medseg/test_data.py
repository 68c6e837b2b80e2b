"""Datalists, nnU-Net folders and the validating loader (bad files are written to tmp_path only)."""
from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from apps.medseg.data import (find_input_cases, group_channel_files, load_case, load_dataset, read_datalist,
                              read_nnunet_dir, split_validation)
from core.engine import UserError


def _vol(path, shape=(10, 12, 8), affine=None, value=None, dtype=np.float32):
    data = np.random.default_rng(0).random(shape).astype(dtype) if value is None else value
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_msd_datalist_relative_paths_and_channels(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for c in ("a", "b"):
        _vol(tmp_path / "imagesTr" / f"{c}_t1.nii.gz")
        _vol(tmp_path / "imagesTr" / f"{c}_t2.nii.gz")
        _vol(tmp_path / "labelsTr" / f"{c}.nii.gz", value=np.zeros((10, 12, 8), np.uint8))
    dl = {"labels": {"0": "background", "1": "tumour"},
          "training": [{"image": [f"./imagesTr/{c}_t1.nii.gz", f"./imagesTr/{c}_t2.nii.gz"],
                        "label": f"./labelsTr/{c}.nii.gz"} for c in ("a", "b")],
          "test": [["./imagesTr/a_t1.nii.gz", "./imagesTr/a_t2.nii.gz"]]}
    (tmp_path / "dataset.json").write_text(json.dumps(dl))
    ds = read_datalist(tmp_path / "dataset.json")
    assert ds["num_channels"] == 2 and len(ds["training"]) == 2 and len(ds["test"]) == 1
    assert ds["training"][0]["image"][1] == str(tmp_path / "imagesTr" / "a_t2.nii.gz")
    assert load_dataset(data_dir=str(tmp_path))["num_channels"] == 2
    tr, va = split_validation(ds, 0.5, seed=0)
    assert len(tr) == 1 and len(va) == 1 and tr[0]["name"] != va[0]["name"]
    # a missing file is named
    dl["training"][1]["label"] = "./labelsTr/zzz.nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps(dl))
    with pytest.raises(UserError, match="zzz.nii.gz"):
        read_datalist(tmp_path / "dataset.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        read_datalist(tmp_path / "bad.json")


def test_nnunet_folder(tmp_path):
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / sub).mkdir()
    for c in ("case1", "case2"):
        for ch in range(2):
            _vol(tmp_path / "imagesTr" / f"{c}_{ch:04d}.nii.gz")
        _vol(tmp_path / "labelsTr" / f"{c}.nii.gz", value=np.zeros((10, 12, 8), np.uint8))
    _vol(tmp_path / "imagesTs" / "new_0000.nii.gz")
    _vol(tmp_path / "imagesTs" / "new_0001.nii.gz")
    ds = read_nnunet_dir(tmp_path)
    assert [c["name"] for c in ds["training"]] == ["case1", "case2"]
    assert ds["num_channels"] == 2 and ds["test"][0]["label"] is None
    (tmp_path / "labelsTr" / "case2.nii.gz").unlink()
    with pytest.raises(UserError, match="case2"):
        read_nnunet_dir(tmp_path)


def test_channel_grouping_reports_gaps_and_non_nifti(tmp_path):
    for n in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0001.nii.gz", "c.nii", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    cases, problems = group_channel_files(sorted(tmp_path.iterdir()))
    assert set(cases) == {"a", "c"} and len(cases["a"]) == 2
    msgs = " | ".join(m for _, m in problems)
    assert "b_0000.nii.gz" in msgs and "missing channel" in msgs
    assert "notes.txt" in msgs and "not a NIfTI" in msgs
    cases2, _ = find_input_cases([tmp_path / "c.nii", tmp_path / "nope.nii.gz"])
    assert list(cases2) == ["c"]


def test_load_case_real_colin27(brain_data):
    img, lab, ref = load_case([brain_data["image"]], brain_data["label"], "colin")
    assert img.shape == (1, 181, 217, 181) and img.dtype == np.float32
    assert lab.shape == (181, 217, 181) and set(np.unique(lab)) == {0, 1}
    assert 1.5e6 < lab.sum() < 2.0e6  # ~1.7 L brain at 1 mm
    assert nib.aff2axcodes(ref.affine) == ("R", "A", "S")


def test_load_case_bad_inputs(tmp_path):
    good = _vol(tmp_path / "good.nii.gz")
    with pytest.raises(UserError, match=r"other_grid.*different grid"):
        aff = np.eye(4)
        aff[0, 3] = 5.0
        load_case([good, _vol(tmp_path / "other_grid.nii.gz", affine=aff)], case="x")
    with pytest.raises(UserError, match=r"other_shape.*different grid"):
        load_case([good, _vol(tmp_path / "other_shape.nii.gz", shape=(10, 12, 9))], case="x")
    with pytest.raises(UserError, match=r"4d.*expected a 3-D volume"):
        load_case([_vol(tmp_path / "4d.nii.gz", shape=(10, 12, 8, 3))], case="x")
    with pytest.raises(UserError, match=r"2d.*expected a 3-D volume"):
        load_case([_vol(tmp_path / "2d.nii.gz", shape=(10, 12))], case="x")
    nan = np.ones((10, 12, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nan[2, 2, 3] = np.inf
    with pytest.raises(UserError, match=r"nan.nii.gz.*2 non-finite"):
        load_case([_vol(tmp_path / "nan.nii.gz", value=nan)], case="x")
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello, not an image" * 30))
    with pytest.raises(UserError, match=r"text.nii.gz.*cannot read NIfTI"):
        load_case([tmp_path / "text.nii.gz"], case="x")
    raw = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"trunc.nii.gz.*case x"):
        load_case([tmp_path / "trunc.nii.gz"], case="x")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG....")
    with pytest.raises(UserError, match=r"scan.png.*not a NIfTI"):
        load_case([tmp_path / "scan.png"], case="x")
    with pytest.raises(UserError, match="label"):
        load_case([good], _vol(tmp_path / "lab.nii.gz", value=np.full((10, 12, 8), 0.5, np.float32)), case="x")
    # a trailing singleton 4th axis is just a 3-D volume
    img, _, _ = load_case([_vol(tmp_path / "t1.nii.gz", shape=(10, 12, 8, 1))], case="x")
    assert img.shape == (1, 10, 12, 8)
