"""Self-configuration: plans from synthetic fingerprints (CT, small structure), the brain case on
Colin27, per-channel normalisation, post-processing, and the plan/train CLI."""
from __future__ import annotations

import json

import numpy as np
import torch

from apps.medseg.plan import MIN_STRUCTURE_VOXELS, modality_of, plan_from_fingerprint


def ct_fingerprint(fg_extent, class_extent=None, n=10):
    """512x512x100 CT at 0.7x0.7x5 mm (358 x 358 x 500 mm), HU intensities."""
    return {"n_cases": n, "n_channels": 1, "spacings": [[0.7, 0.7, 5.0]] * n, "shapes": [[512, 512, 100]] * n,
            "scan_extent_mm": [[358.4, 358.4, 500.0]] * n, "foreground_extent_mm": [list(fg_extent)] * n,
            "class_volume_ml": {"1": 1500.0}, "class_extent_mm": {"1": list(class_extent or fg_extent)},
            "intensity": [{"mean": 99.0, "std": 37.0, "p00_5": -40.0, "p99_5": 190.0, "min": -200.0, "max": 900.0}],
            "channel_min": [-1024.0], "modality": ["CT"], "labels": {"0": "background", "1": "liver"}}


def _check_common(plan, budget_voxels=None):
    d = plan["config"]["data"]
    assert all(p % 8 == 0 and p >= 16 for p in d["patch_size"])
    assert np.prod(d["patch_size"]) <= (budget_voxels or plan["budget"]["patch_voxels"])
    assert plan["config"]["train"]["batch_size"] >= 2
    return d


def test_ct_large_organ_plan():
    plan = plan_from_fingerprint(ct_fingerprint([180, 150, 200]), "cpu", 20 * 60)
    d = _check_common(plan)
    sp, patch = np.array(d["spacing"]), np.array(d["patch_size"])
    assert sp[2] >= 5.0 and sp[0] == sp[1] and sp[0] >= 0.7          # never finer than the data
    assert sp[0] <= 180 / MIN_STRUCTURE_VOXELS                        # the organ keeps its shape
    # the patch sees most of the abdomen around the liver (it wants 2x the organ, capped by the scan)
    assert np.all(patch * sp >= 0.85 * np.array([358.4, 300, 400]))
    n = d["norm"][0]
    assert n["scheme"] == "ct" and n["clip"] == [-40.0, 190.0] and n["mean"] == 99.0 and n["std"] == 37.0
    # a GPU and a longer budget buy resolution, not a smaller field of view
    gpu = plan_from_fingerprint(ct_fingerprint([180, 150, 200]), "gpu", 12 * 3600)
    assert gpu["config"]["data"]["spacing"][0] < sp[0] and gpu["config"]["model"]["preset"] == "base"
    assert np.all(np.array(gpu["config"]["data"]["patch_size"]) * gpu["config"]["data"]["spacing"]
                  >= 0.85 * np.array([358.4, 300, 400]))


def test_small_structure_plan():
    # a 20 mm lesion: resolution must stay fine; context is the lesion plus a margin, not the whole body
    plan = plan_from_fingerprint(ct_fingerprint([20, 20, 20]), "cpu", 20 * 60)
    d = _check_common(plan)
    sp, patch = np.array(d["spacing"]), np.array(d["patch_size"])
    assert sp[0] <= 20 / MIN_STRUCTURE_VOXELS
    assert sp[2] == 5.0
    assert d["rotate_deg"] == [0.0, 0.0, 20.0]                        # 0.9 x 0.9 x 5 mm: in-plane rotation only
    assert np.all(patch[:2] * sp[:2] >= 70) and np.all(patch[:2] * sp[:2] <= 200)
    # a tiny time budget shrinks the patch before it coarsens the lesion
    quick = plan_from_fingerprint(ct_fingerprint([20, 20, 20]), "cpu", 60)
    assert quick["config"]["data"]["spacing"][0] <= 20 / MIN_STRUCTURE_VOXELS
    assert np.prod(quick["config"]["data"]["patch_size"]) <= np.prod(patch)


def test_modality():
    assert modality_of({"0": "CT"}, 1, [0.0]) == ["CT"]
    assert modality_of({"0": "T1", "1": "FLAIR"}, 2, [-1024.0, 0.0]) == ["MRI", "MRI"]
    assert modality_of(None, 2, [-1024.0, 0.0]) == ["CT", "MRI"]  # air at -1000 HU


def test_planned_normalisation():
    from apps.medseg.transforms import PlannedNormalised

    x = torch.tensor([[-1000.0, 0.0, 50.0, 300.0], [1.0, 2.0, 3.0, 4.0]]).reshape(2, 4, 1, 1)
    t = PlannedNormalised([{"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 10.0}, {"scheme": "zscore"}])
    y = t({"image": x})["image"]
    assert torch.allclose(y[0].flatten(), torch.tensor([-15.0, -5.0, 0.0, 15.0]))
    assert abs(float(y[1].mean())) < 1e-6 and abs(float(y[1].std()) - 1) < 1e-5


def test_keep_largest_per_class():
    from apps.medseg.infer import keep_largest_component

    lab = np.zeros((12, 12, 12), np.uint8)
    lab[1:5, 1:5, 1:5] = 1
    lab[8:9, 8:9, 8:9] = 1       # stray class-1 voxel
    lab[1:3, 8:10, 8:10] = 2
    lab[9:10, 1:2, 1:2] = 2      # stray class-2 voxel
    only1 = keep_largest_component(lab, [1])
    assert only1[8, 8, 8] == 0 and only1[9, 1, 1] == 2 and (only1 == 1).sum() == 64
    both = keep_largest_component(lab)
    assert both[9, 1, 1] == 0 and (both == 2).sum() == 8


def test_brain_plan_on_colin27(brain_data):
    """The brain case: a whole-head patch at a few mm (BRAIN_CONFIG: 48^3 at 4 mm)."""
    from apps.medseg.data import read_datalist
    from apps.medseg.plan import plan_dataset

    plan = plan_dataset(read_datalist(brain_data["datalist"]), "cpu", 20 * 60, show_progress=False)
    d = _check_common(plan)
    fp = plan["fingerprint"]
    assert fp["modality"] == ["MRI"] and d["norm"] == [{"scheme": "zscore"}]
    assert 1500 < fp["class_volume_ml"]["1"] < 2000                    # an adult brain, in ml
    sp, patch = np.array(d["spacing"]), np.array(d["patch_size"])
    assert np.all((sp >= 3.0) & (sp <= 5.0))
    assert np.all(patch * sp >= 0.9 * np.array(fp["median_scan_extent_mm"]))  # the whole head in one patch
    assert 40 <= patch.min() and patch.max() <= 64
    assert d["flip_axes"] == [0]


def test_plan_and_train_cli(brain_data, tmp_path):
    """``plan`` writes plans.json (never over an existing one); ``train`` without a plan plans, prints it
    and stores plan + post-processing decision in the checkpoint; ``--set`` overrides the plan."""
    import contextlib
    import io

    from apps.medseg.cli import main

    def cli(*a):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                code = main([str(x) for x in a])
            except SystemExit as e:
                code = e.code
        return code, buf.getvalue()

    out = tmp_path / "plans.json"
    code, text = cli("plan", "--datalist", brain_data["datalist"], "--out", out, "--max-time", "00:00:20:00",
                     "--accelerator", "cpu")
    assert code == 0 and "plan: spacing" in text
    plan = json.loads(out.read_text())
    assert plan["config"]["data"]["patch_size"] and plan["fingerprint"]["modality"] == ["MRI"]
    code, text = cli("plan", "--datalist", brain_data["datalist"], "--out", out)
    assert code == 2 and "already exists" in text

    run = tmp_path / "run"
    code, text = cli("train", "--datalist", brain_data["datalist"], "--out", run, "--max-epochs", "1",
                     "--max-time", "00:00:00:30", "--accelerator", "cpu", "--seed", "0",
                     "--set", "train.steps_per_epoch=2", "--set", "data.aug=light")
    assert code == 0, text
    assert "plan: spacing" in text and (run / "plans.json").is_file()
    ck = torch.load(str(run / "checkpoints" / "best.ckpt"), map_location="cpu", weights_only=False)
    cfg = ck["hyper_parameters"]["config"]
    auto = json.loads((run / "plans.json").read_text())
    assert cfg["plan"]["fingerprint"]["modality"] == ["MRI"]
    assert cfg["data"]["patch_size"] == auto["config"]["data"]["patch_size"]
    assert cfg["data"]["aug"] == "light" and cfg["train"]["steps_per_epoch"] == 2   # --set wins
    assert set(cfg["postprocessing"]) == {"keep_largest", "dice_before", "dice_after"}
    assert len(cfg["postprocessing"]["dice_before"]) == 1
