"""Inference I/O: masks on the input's own grid (RAS and non-RAS), the CLI, and bad inputs per case."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from apps.medseg.infer import preprocess_case, probs_to_input_grid, save_mask

from .conftest import reorient, tiny_config

ROOT = Path(__file__).resolve().parents[3]
HEADER_KEYS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
               "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units", "dim_info")


def _same_grid(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert out.shape == ref.shape[:3]
    assert np.array_equal(out.affine, ref.affine)
    for k in HEADER_KEYS:
        assert np.array_equal(out.header[k], ref.header[k]), k
    assert np.array_equal(out.header["pixdim"][:4], ref.header["pixdim"][:4])
    assert out.get_data_dtype() == np.uint8
    assert out.dataobj.slope == 1.0 and out.dataobj.inter == 0.0
    assert np.asanyarray(out.dataobj).dtype == np.uint8


def _one_hot_probs(x, lab_path, cfg):
    """Probabilities = one-hot of the preprocessed label (a perfect network)."""
    from monai import transforms as T

    from apps.medseg.transforms import preprocess_transforms

    d = T.Compose(preprocess_transforms(cfg, with_label=True))({"image": [x], "label": str(lab_path)})
    lab = d["label"].as_tensor()[0].long()
    return torch.stack([(lab == 0).float(), (lab == 1).float()]), d["image"].affine


def test_inversion_is_exact_without_resampling(brain_data, tmp_path):
    """No spacing change, RAS reorientation + crop only: the mask comes back voxel-exact on a non-RAS grid."""
    cfg = dict(tiny_config()["data"], spacing=None)
    src_img, src_lab = nib.load(str(brain_data["image"])), nib.load(str(brain_data["label"]))
    nib.save(reorient(src_img, ("S", "L", "P")), str(tmp_path / "x.nii.gz"))
    lab_img = reorient(src_lab, ("S", "L", "P"))
    nib.save(lab_img, str(tmp_path / "lab.nii.gz"))
    probs, aff = _one_hot_probs(str(tmp_path / "x.nii.gz"), tmp_path / "lab.nii.gz", cfg)
    x, ref = preprocess_case([tmp_path / "x.nii.gz"], cfg)
    assert x.shape[1:] != ref.shape  # the foreground crop really cropped
    labels, p = probs_to_input_grid(probs, aff, ref, keep_probs=True, chunk=1)
    assert np.array_equal(labels, np.asarray(lab_img.dataobj))
    assert np.allclose(p.sum(0), 1.0, atol=1e-5)
    save_mask(labels, ref, tmp_path / "out" / "x.nii.gz")
    _same_grid(nib.load(str(tmp_path / "out" / "x.nii.gz")), ref)
    with pytest.raises(Exception, match="already exists"):
        save_mask(labels, ref, tmp_path / "out" / "x.nii.gz")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.nii.gz"]  # no temp files left


def test_inversion_with_resampling_keeps_the_mask(brain_data, tmp_path):
    """4 mm processing of an anisotropic non-RAS copy, mapped back: same grid, Dice vs truth > 0.9."""
    cfg = tiny_config()["data"]
    src_img, src_lab = nib.load(str(brain_data["image"])), nib.load(str(brain_data["label"]))
    zoomed = nib.Nifti1Image(np.asarray(src_img.dataobj)[:, :, ::2], src_img.affine @ np.diag([1, 1, 2, 1]))
    zl = nib.Nifti1Image(np.asarray(src_lab.dataobj)[:, :, ::2], src_lab.affine @ np.diag([1, 1, 2, 1]))
    nib.save(reorient(zoomed, ("A", "S", "L")), str(tmp_path / "x.nii.gz"))
    truth = reorient(zl, ("A", "S", "L"))
    nib.save(truth, str(tmp_path / "lab.nii.gz"))
    probs, aff = _one_hot_probs(str(tmp_path / "x.nii.gz"), tmp_path / "lab.nii.gz", cfg)
    x, ref = preprocess_case([tmp_path / "x.nii.gz"], cfg)
    labels, _ = probs_to_input_grid(probs, aff, ref)
    t = np.asarray(truth.dataobj) > 0
    dice = 2 * (t & (labels > 0)).sum() / (t.sum() + (labels > 0).sum())
    assert labels.shape == truth.shape and dice > 0.9


def _cli(*args):
    """Run ``ssm-medseg`` in this process (imports are paid once); returns (exit code, stdout, stderr)."""
    import contextlib
    import io
    from types import SimpleNamespace

    from apps.medseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_training_lowers_the_loss_on_colin27(brain_data):
    """Dice+CE on fixed real Colin27 patches goes down with the module's own optimiser."""
    from apps.medseg.train import SegModule
    from apps.medseg.transforms import train_transforms

    torch.manual_seed(0)
    cfg = tiny_config()
    tf = train_transforms(dict(cfg["data"], aug="none"))
    tf.set_random_state(seed=0)
    items = tf({"image": [str(brain_data["image"])], "label": str(brain_data["label"]), "name": "c"})
    x = torch.stack([i["image"] for i in items])
    y = torch.stack([i["label"] for i in items])
    module = SegModule(cfg, 1, 2, ["background", "brain"])
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt   # poly schedule: the optimiser alone here
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = module.loss(module(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_training_run_keeps_best_checkpoint(tiny_run):
    out = tiny_run["out"]
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    import csv

    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv")))
    assert any(r.get("val_dice") for r in rows) and any(r.get("train_loss_step") for r in rows)
    assert 0.0 <= tiny_run["best_val_dice"] <= 1.0
    assert json.loads((out / "metrics.json").read_text())["class_names"] == ["background", "brain"]


def test_predict_cli_ras_non_ras_and_bad_inputs(tiny_run, brain_data, tmp_path):
    ckpt = tiny_run["best_checkpoint"]
    src = nib.load(str(brain_data["image"]))
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(src, str(inp / "ras_0000.nii.gz"))
    nonras = reorient(src, ("L", "I", "P"))
    nib.save(nonras, str(inp / "lip_0000.nii.gz"))
    # bad cases: each must be named, the others must still be written
    (inp / "notes.txt").write_text("not an image")
    (inp / "corrupt_0000.nii.gz").write_bytes(gzip.compress(b"garbage" * 100))
    small = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    nib.save(small, str(inp / "missing_0001.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), str(inp / "fourd_0000.nii.gz"))
    bad = np.zeros((8, 8, 8), np.float32)
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(inp / "nan_0000.nii.gz"))
    nib.save(small, str(inp / "twoch_0000.nii.gz"))
    nib.save(small, str(inp / "twoch_0001.nii.gz"))
    out = tmp_path / "out"
    r = _cli("predict", "--checkpoint", ckpt, "-i", inp, "-o", out)
    assert r.returncode == 2, r.stderr
    err = r.stderr
    for case, why in (("notes.txt", "not a NIfTI"), ("corrupt", "cannot read NIfTI"), ("missing", "missing channel"),
                      ("fourd", "3-D"), ("nan", "non-finite"), ("twoch", "expects 1")):
        assert any(case in line and why in line for line in err.splitlines()), (case, err)
    assert sorted(p.name for p in out.iterdir()) == ["lip.nii.gz", "ras.nii.gz"]
    a, b = nib.load(str(out / "ras.nii.gz")), nib.load(str(out / "lip.nii.gz"))
    _same_grid(a, src)
    _same_grid(b, nonras)
    # the same world-space mask whichever way the input was stored
    b_ras = b.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(b.affine),
                                                            nib.orientations.axcodes2ornt(("R", "A", "S"))))
    assert np.array_equal(np.asarray(b_ras.dataobj), np.asarray(a.dataobj))
    # no overwrite without --overwrite; with it, probabilities too
    before = (out / "ras.nii.gz").stat().st_mtime_ns
    r = _cli("predict", "--checkpoint", ckpt, "-i", inp / "ras_0000.nii.gz", "-o", out)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (out / "ras.nii.gz").stat().st_mtime_ns == before
    r = _cli("predict", "--checkpoint", ckpt, "-i", inp / "ras_0000.nii.gz", "-o", out, "--overwrite",
             "--save-probabilities")
    assert r.returncode == 0, r.stderr
    p = nib.load(str(out / "ras_probabilities.nii.gz"))
    assert p.shape == (181, 217, 181, 2) and np.allclose(p.affine, src.affine)
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temp files


def test_evaluate_cli_and_bad_checkpoint(tiny_run, brain_data, tmp_path):
    # a 2 mm copy keeps HD95's distance transforms cheap
    src_img, src_lab = nib.load(str(brain_data["image"])), nib.load(str(brain_data["label"]))
    half = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(src_img.dataobj)[::2, ::2, ::2], src_img.affine @ half), str(tmp_path / "c.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(src_lab.dataobj)[::2, ::2, ::2], src_lab.affine @ half), str(tmp_path / "l.nii.gz"))
    (tmp_path / "dl.json").write_text(json.dumps({"labels": {"0": "background", "1": "brain"},
                                                  "training": [{"image": "c.nii.gz", "label": "l.nii.gz"}]}))
    r = _cli("evaluate", "--checkpoint", tiny_run["best_checkpoint"], "--data", tmp_path / "dl.json",
             "-o", tmp_path / "evaluation.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "evaluation.json").read_text())
    case = res["cases"][0]
    assert len(case["dice"]) == 1 and 0 <= case["dice"][0] <= 1 and "hd95" in case
    assert "brain" in r.stdout and "HD95" in r.stdout
    # the old spellings (--datalist, --out FOLDER) still work, each with a notice
    r = _cli("evaluate", "--checkpoint", tiny_run["best_checkpoint"], "--datalist", tmp_path / "dl.json",
             "--out", tmp_path)
    assert r.returncode == 2 and "evaluation.json" in r.stderr and "already exists" in r.stderr
    assert "--datalist is deprecated" in r.stderr and "a folder is deprecated" in r.stderr
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    r = _cli("predict", "--checkpoint", tmp_path / "junk.ckpt", "-i", brain_data["image"], "-o", tmp_path / "o")
    assert r.returncode == 2 and "junk.ckpt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("train", "--datalist", tmp_path / "nope.json", "--out", tmp_path / "run")
    assert r.returncode == 2 and "nope.json" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "--data", tmp_path / "dl.json", "-o", tmp_path / "run", "--set", "train.lr_schedule=cosine")
    assert r.returncode == 2 and "lr_schedule" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing half-made for a bad input


def test_keep_largest_component():
    from apps.medseg.infer import keep_largest_component

    lab = np.zeros((12, 12, 12), np.uint8)
    lab[1:6, 1:6, 1:6] = 1
    lab[9:11, 9:11, 9:11] = 1   # a stray island of class 1
    lab[8, 1, 1] = 2            # class 2: one voxel, kept (its largest)
    out = keep_largest_component(lab)
    assert out[1:6, 1:6, 1:6].all() and not out[9:11, 9:11, 9:11].any() and out[8, 1, 1] == 2
