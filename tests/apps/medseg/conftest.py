"""Fixtures: the real Colin27 T1 (+ brain mask), non-RAS copies, and one tiny trained checkpoint."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import shared_data


os.environ.setdefault("SSM_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def colin() -> Path:
    return shared_data("medseg/colin27", "ch2.nii.gz", "ch2bet.nii.gz")


@pytest.fixture(scope="session")
def brain_data(colin, tmp_path_factory) -> dict:
    """Colin27 T1 (read in place) and its brain mask ``ch2bet > 0`` written to a temp folder."""
    d = tmp_path_factory.mktemp("brain")
    bet = nib.load(str(colin / "ch2bet.nii.gz"))
    mask = nib.Nifti1Image((np.asarray(bet.dataobj) > 0).astype(np.uint8), bet.affine, header=bet.header)
    mask.header.set_data_dtype(np.uint8)
    nib.save(mask, str(d / "brainmask.nii.gz"))
    dl = {"labels": {"0": "background", "1": "brain"},
          "training": [{"image": str(colin / "ch2.nii.gz"), "label": str(d / "brainmask.nii.gz")}]}
    (d / "dataset.json").write_text(json.dumps(dl))
    return {"dir": d, "image": colin / "ch2.nii.gz", "label": d / "brainmask.nii.gz", "datalist": d / "dataset.json"}


def reorient(img: nib.Nifti1Image, axcodes) -> nib.Nifti1Image:
    tr = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt(axcodes))
    out = img.as_reoriented(tr)
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=2)
    return out


def tiny_config() -> dict:
    from apps.medseg.config import DEFAULTS

    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"].update(spacing=[4.0, 4.0, 4.0], patch_size=[32, 32, 32], norm="percentile", samples_per_volume=2,
                       aug="light", num_classes=2)
    cfg["train"].update(batch_size=2, steps_per_epoch=3, sw_batch_size=2)
    cfg["pretrain"].update(batch_size=2, steps_per_epoch=2)
    return cfg


@pytest.fixture(scope="session")
def tiny_run(brain_data, tmp_path_factory) -> dict:
    """A tiny UNet-Mamba trained for a few steps on Colin27 (4 mm, 32^3 patches): checkpoint + metrics."""
    from apps.medseg.data import read_datalist
    from apps.medseg.train import run_train
    from core.engine import seed_everything

    out = tmp_path_factory.mktemp("run")
    seed_everything(0)
    res = run_train(tiny_config(), read_datalist(brain_data["datalist"]), out,
                    dict(max_epochs=2, accelerator="cpu", devices=1), seed=0, progress=False)
    return {"out": out, **res}
