"""Self-configuration in the manner of nnU-Net: a dataset fingerprint, then rules that turn it into a
training configuration (``plans.json``) for the compute budget at hand.

The fingerprint (:func:`fingerprint`) reads every training case once, in RAS order: voxel
spacings and shapes, the extent of the scanned body part (voxels above the volume minimum), each
class's volume and bounding box, per-channel intensity statistics inside the labelled foreground,
and the modality from ``dataset.json`` (``channel_names`` / ``modality``).

The rules (:func:`plan_from_fingerprint`) trade resolution for context: a patch must hold the
structure *and* enough anatomy around it to tell it from look-alikes (on Colin27 a 96 mm patch
labelled face and neck as brain; a whole-head 48^3 patch at 4 mm did not). The context wanted is
twice the foreground's extent (at least 30 mm of margin on each side) but no more than the scan;
the voxel budget of one patch follows from the device and the time budget (enough optimiser steps
must fit); the target spacing is the finest spacing at which the context fits that budget, never
finer than the data's median spacing nor so coarse that the smallest structure spans fewer than
:data:`MIN_STRUCTURE_VOXELS` voxels. Normalisation is nnU-Net's: CT clipped to the foreground's
[0.5, 99.5] percentiles then z-scored with the foreground mean and std of the whole dataset; any
other modality z-scored per case.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import math

import numpy as np

from core.engine import UserError, progress

PLAN_VERSION = 1
MIN_STRUCTURE_VOXELS = 12      # the smallest structure's shortest side keeps at least this many voxels
CONTEXT_FACTOR = 2.0           # context wanted around the foreground: this many times its extent ...
CONTEXT_MARGIN_MM = 30.0       # ... and at least this margin on each side
MIN_STEPS = 500                # optimiser steps the time budget must allow (shrinks the patch if not)
SAMPLES_PER_CASE = 20000       # foreground voxels sampled per case and channel for intensity statistics
# seconds per patch voxel of one training step (batch of 1), measured with the presets on this
# project's machines: tiny on one CPU thread (605 steps of 2x48^3 in 20 min, augmentation and
# validation included), base on one GPU (an estimate)
DEVICE_COST = {"cpu": {"preset": "tiny", "s_per_voxel": 9e-6, "max_voxels": 64 ** 3, "overlap": 0.25,
                       "default_minutes": 20.0},
               "gpu": {"preset": "base", "s_per_voxel": 1.2e-7, "max_voxels": 128 ** 3, "overlap": 0.5,
                       "default_minutes": 12 * 60.0}}
_LR_WORDS = ("left", "right")


def _ras(img):
    """(orientation transform to RAS, RAS spacing (3,)) of a NIfTI image."""
    import nibabel as nib

    ornt = nib.io_orientation(img.affine)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    sp = np.empty(3)
    for src, (dst, _) in enumerate(ornt):
        sp[int(dst)] = zooms[src]
    return ornt, sp


def _bbox_mm(mask: np.ndarray, spacing: np.ndarray) -> Optional[List[float]]:
    if not mask.any():
        return None
    ext = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.nonzero(mask.any(axis=other))[0]
        ext.append(float((idx[-1] - idx[0] + 1) * spacing[ax]))
    return ext


def modality_of(channel_names: Optional[Mapping], n_channels: int, low: Sequence[float]) -> List[str]:
    """``"CT"`` or ``"MRI"`` per channel: from dataset.json names, else CT when the darkest voxels
    sit near air's -1000 HU (``low``: each channel's minimum)."""
    names = {}
    if isinstance(channel_names, Mapping):
        for k, v in channel_names.items():
            try:
                names[int(k)] = str(v)
            except (TypeError, ValueError):
                continue
    out = []
    for c in range(n_channels):
        name = names.get(c)
        if name is not None:
            out.append("CT" if name.strip().lower() in ("ct", "computed tomography") else "MRI")
        else:
            out.append("CT" if -1500.0 <= low[c] <= -500.0 else "MRI")
    return out


def fingerprint(ds: Mapping, seed: int = 0, show_progress: bool = True) -> Dict:
    """nnU-Net's dataset fingerprint of ``ds["training"]`` (cases of :func:`apps.medseg.data.load_dataset`).

    Returns a JSON-able dict: per-case RAS ``spacings``/``shapes``, ``scan_extent_mm`` (the body part:
    voxels above the volume minimum) and ``foreground_extent_mm``; per class ``class_volume_ml`` and
    ``class_extent_mm`` (median bounding box over cases holding it); per channel ``intensity``
    (mean, std, percentiles 0.5/99.5, min, max of foreground voxels, pooled) and ``modality``.
    """
    import nibabel as nib

    from .data import load_case

    cases = [c for c in ds["training"] if c.get("label")]
    if not cases:
        raise UserError("dataset", "no labelled training case to plan from")
    rng = np.random.default_rng(seed)
    n_ch = int(ds["num_channels"])
    spacings, shapes, scan_ext, fg_ext, mins = [], [], [], [], []
    samples: List[List[np.ndarray]] = [[] for _ in range(n_ch)]
    vol: Dict[int, List[float]] = {}
    ext: Dict[int, List[List[float]]] = {}
    it = progress(cases, "fingerprint", total=len(cases)) if show_progress else cases
    for c in it:
        img, lab, ref = load_case(c["image"], c["label"], c["name"])
        ornt, sp = _ras(ref)
        img = np.stack([nib.orientations.apply_orientation(ch, ornt) for ch in img])
        lab = nib.orientations.apply_orientation(lab, ornt)
        spacings.append(sp.tolist())
        shapes.append(list(lab.shape))
        x0 = img[0]
        lo, hi = float(x0.min()), float(x0.max())
        scan_ext.append(_bbox_mm(x0 > lo + 1e-3 * (hi - lo), sp) or (np.asarray(lab.shape) * sp).tolist())
        fg = lab > 0
        fg_ext.append(_bbox_mm(fg, sp) or scan_ext[-1])
        voxel_ml = float(np.prod(sp)) / 1000.0
        for k in np.unique(lab):
            if k == 0:
                continue
            m = lab == k
            vol.setdefault(int(k), []).append(float(m.sum()) * voxel_ml)
            ext.setdefault(int(k), []).append(_bbox_mm(m, sp))
        mins.append([float(ch.min()) for ch in img])
        for ch in range(n_ch):
            v = img[ch][fg] if fg.any() else img[ch].ravel()
            if v.size > SAMPLES_PER_CASE:
                v = rng.choice(v, SAMPLES_PER_CASE, replace=False)
            samples[ch].append(v.astype(np.float64))
    intensity = []
    for ch in range(n_ch):
        v = np.concatenate(samples[ch])
        intensity.append({"mean": float(v.mean()), "std": float(v.std()), "p00_5": float(np.percentile(v, 0.5)),
                          "p99_5": float(np.percentile(v, 99.5)), "min": float(v.min()), "max": float(v.max())})
    low = np.min(np.asarray(mins), 0).tolist()
    return {"n_cases": len(cases), "n_channels": n_ch, "spacings": spacings, "shapes": shapes,
            "scan_extent_mm": scan_ext, "foreground_extent_mm": fg_ext,
            "class_volume_ml": {str(k): float(np.median(v)) for k, v in sorted(vol.items())},
            "class_extent_mm": {str(k): np.median(np.asarray(e), 0).tolist() for k, e in sorted(ext.items())},
            "intensity": intensity, "channel_min": low,
            "modality": modality_of(ds.get("channel_names"), n_ch, low),
            "labels": ds.get("labels")}


def _round_sig(x: float, digits: int = 2) -> float:
    """``x`` rounded down to ``digits`` significant digits (never coarser than asked)."""
    if x <= 0:
        return float(x)
    q = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.floor(x / q + 1e-9) * q:.{digits + 2}g}")


def _patch_for(ctx: np.ndarray, spacing: np.ndarray, scan: np.ndarray, div: int) -> List[int]:
    """Patch (3,) covering ``ctx`` mm at ``spacing``, multiples of ``div``, no larger than the scan."""
    out = []
    for a in range(3):
        want = min(ctx[a], scan[a]) / spacing[a]
        out.append(int(max(2 * div, div * round(want / div))))
    return out


def _label_names(labels) -> List[str]:
    if isinstance(labels, Mapping):
        return [str(k) + " " + str(v) for k, v in labels.items()]
    return []


def plan_from_fingerprint(fp: Mapping, device: str = "cpu", max_time_s: Optional[float] = None,
                          batch_size: int = 2) -> Dict:
    """The rules: fingerprint + budget -> ``{"version", "fingerprint", "budget", "config", "notes"}``,
    where ``config`` holds the ``data``/``model``/``train`` fields that override ``config.DEFAULTS``.
    ``device`` is ``cpu`` or ``gpu``; ``max_time_s`` the training budget (``None``: the device's default)."""
    from .model import build_model

    dev = "gpu" if device in ("gpu", "cuda") else "cpu"
    cost = DEVICE_COST[dev]
    notes: List[str] = []
    budget_s = float(max_time_s) if max_time_s else cost["default_minutes"] * 60.0
    median_sp = np.median(np.asarray(fp["spacings"], dtype=np.float64), 0)
    scan = np.median(np.asarray(fp["scan_extent_mm"], dtype=np.float64), 0)
    fg = np.median(np.asarray(fp["foreground_extent_mm"], dtype=np.float64), 0)
    ctx = np.minimum(scan, np.maximum(CONTEXT_FACTOR * fg, fg + 2 * CONTEXT_MARGIN_MM))
    smallest = min([min(e) for e in fp["class_extent_mm"].values()] or [float(fg.min())])
    # patch voxels: as many as the device holds, but few enough that MIN_STEPS steps fit the budget
    voxels = min(cost["max_voxels"], budget_s / (MIN_STEPS * batch_size * cost["s_per_voxel"]))
    voxels = max(voxels, 32 ** 3)
    div = build_model({"preset": cost["preset"]}, 1, 2).divisor
    s_res = max(float(median_sp.min()), smallest / MIN_STRUCTURE_VOXELS)  # coarsest spacing the structures allow
    s = float(median_sp.min())
    while True:  # the finest (rounded) spacing at which the context fits the voxel budget
        sp = np.array([_round_sig(v) for v in np.maximum(median_sp, s)])
        patch = _patch_for(ctx, sp, scan, div)
        if np.prod(patch) <= voxels or s >= s_res:
            break
        s = min(s * 1.02, s_res)
    if all(a >= b for a, b in zip(np.asarray(patch) * sp, scan)):
        notes.append("the patch holds the whole scan")
    while np.prod(patch) > voxels and max(patch) > 2 * div:  # resolution won: shrink the longest side
        a = int(np.argmax(np.asarray(patch) * sp))
        patch[a] -= div
    covered = [round(float(p * v / c), 2) for p, v, c in zip(patch, sp, ctx)]
    notes.append(f"context wanted {np.round(ctx).astype(int).tolist()} mm (foreground {np.round(fg).astype(int).tolist()} "
                 f"mm x{CONTEXT_FACTOR:g} or +{CONTEXT_MARGIN_MM:g} mm a side, at most the scan "
                 f"{np.round(scan).astype(int).tolist()} mm); the patch covers {covered} of it")
    notes.append(f"spacing {sp.tolist()} mm: median spacing {np.round(median_sp, 2).tolist()}, coarsest allowed "
                 f"{s_res:.2f} mm (smallest structure {smallest:.0f} mm / {MIN_STRUCTURE_VOXELS} voxels)")
    step_s = batch_size * float(np.prod(patch)) * cost["s_per_voxel"]
    est_steps = int(budget_s / step_s)
    notes.append(f"{dev}: {cost['preset']} preset, patch {patch} ({int(np.prod(patch))} voxels, budget "
                 f"{int(voxels)}), about {step_s:.1f} s a step, {est_steps} steps in {budget_s / 60:.0f} min")
    # normalisation per channel
    norm = []
    for ch, (mod, st) in enumerate(zip(fp["modality"], fp["intensity"])):
        if mod == "CT":
            norm.append({"scheme": "ct", "clip": [st["p00_5"], st["p99_5"]], "mean": st["mean"],
                         "std": max(st["std"], 1e-6)})
            notes.append(f"channel {ch} CT: clip to foreground [{st['p00_5']:.0f}, {st['p99_5']:.0f}] then "
                         f"z-score with foreground mean {st['mean']:.1f} std {st['std']:.1f}")
        else:
            norm.append({"scheme": "zscore"})
            notes.append(f"channel {ch} {mod}: z-score per case")
    anisotropic = float(sp.max() / sp.min()) > 3.0
    names = " ".join(_label_names(fp.get("labels"))).lower()
    sided = any(w in names for w in _LR_WORDS)
    rot = [0.0, 0.0, 20.0] if anisotropic else 20.0  # thick slices: rotate in-plane only, as nnU-Net does
    flip = [] if sided else [0]
    notes.append("augmentation strong; " + ("in-plane rotation only (anisotropic spacing); " if anisotropic else "")
                 + ("no left-right flip (labels name a side)" if sided else "left-right flip"))
    val_every = max(1, int(round(est_steps / 8 / 25)))
    k = max([int(x) for x in fp["class_volume_ml"]] or [1]) + 1
    config = {
        "data": {"spacing": sp.tolist(), "norm": norm, "patch_size": patch, "samples_per_volume": 2,
                 "pos": 1, "neg": 1, "aug": "strong", "rotate_deg": rot, "flip_axes": flip,
                 "crop_foreground": True},
        "model": {"preset": cost["preset"]},
        "train": {"batch_size": batch_size, "lr": 3e-3, "lr_schedule": "poly", "steps_per_epoch": 25,
                  "val_every": val_every, "sw_batch_size": batch_size, "overlap": cost["overlap"]},
    }
    fp_small = {k_: v for k_, v in fp.items() if k_ not in ("spacings", "shapes", "scan_extent_mm",
                                                            "foreground_extent_mm")}
    fp_small.update(median_spacing=median_sp.tolist(), median_scan_extent_mm=scan.tolist(),
                    median_foreground_extent_mm=fg.tolist(), min_classes=k)
    return {"version": PLAN_VERSION, "fingerprint": fp_small,
            "budget": {"device": dev, "max_time_s": budget_s, "patch_voxels": int(voxels),
                       "est_step_s": round(step_s, 2), "est_steps": est_steps},
            "config": config, "notes": notes}


def plan_dataset(ds: Mapping, device: str = "cpu", max_time_s: Optional[float] = None, seed: int = 0,
                 show_progress: bool = True) -> Dict:
    """Fingerprint ``ds`` and apply the rules: the plan dict (see :func:`plan_from_fingerprint`)."""
    return plan_from_fingerprint(fingerprint(ds, seed, show_progress), device, max_time_s)


def read_plan(path) -> Dict:
    """A ``plans.json`` written by ``ssm-medseg plan``; ``UserError`` if it is not one."""
    import json
    from pathlib import Path

    p = Path(path)
    try:
        plan = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(p, f"not a readable plans.json ({type(e).__name__})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("config"), dict):
        raise UserError(p, 'not an ssm-medseg plan (no "config" mapping)')
    return plan


def format_plan(plan: Mapping) -> str:
    """A few lines for the console: the chosen fields and why."""
    d, t, m = plan["config"]["data"], plan["config"]["train"], plan["config"]["model"]
    norms = ", ".join(n["scheme"] for n in d["norm"]) if isinstance(d["norm"], list) else str(d["norm"])
    lines = [f"plan: spacing {d['spacing']} mm, patch {d['patch_size']}, batch {t['batch_size']}, preset "
             f"{m['preset']}, norm {norms}, overlap {t['overlap']}"]
    lines += [f"  - {n}" for n in plan.get("notes", [])]
    return "\n".join(lines)


def budget_device(accelerator: Optional[str]) -> str:
    """``--accelerator`` -> the planner's device (``gpu`` when one is asked for or found by ``auto``)."""
    if accelerator in ("gpu", "cuda"):
        return "gpu"
    if accelerator in (None, "auto"):
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def plan_for_training(ds: Mapping, plan_arg: Optional[str], out_dir, max_time: Optional[str],
                      accelerator: Optional[str], seed: Optional[int], log=print) -> Optional[Dict]:
    """The plan ``train`` uses: ``plan_arg`` a ``plans.json`` path, ``"none"`` (no plan: the
    defaults), or ``None`` (plan now for this device and ``--max-time``; written to
    ``out_dir/plans.json``). Printed either way."""
    from pathlib import Path

    from core.engine import max_time_seconds, write_json

    if plan_arg is not None and str(plan_arg).lower() == "none":
        return None
    if plan_arg is not None:
        plan = read_plan(plan_arg)
        log(f"using {plan_arg}")
    else:
        plan = plan_dataset(ds, budget_device(accelerator), max_time_seconds(max_time), seed or 0)
        write_json(Path(out_dir) / "plans.json", plan)
    log(format_plan(plan))
    return plan


def plan_command(data: str, out=None, max_time: Optional[str] = None, accelerator: str = "auto",
                 seed: int = 0, overwrite: bool = False, progress: bool = True) -> int:
    """``ssm-medseg plan``: dataset fingerprint -> plans.json (default: in the dataset folder)."""
    from pathlib import Path

    from core.engine import ensure_new, max_time_seconds, write_json

    from .data import load_data

    src = Path(data) if Path(data).is_dir() else Path(data).parent
    path = Path(out) if out else src / "plans.json"
    ensure_new(path, overwrite)
    plan = plan_dataset(load_data(data), budget_device(accelerator), max_time_seconds(max_time), seed or 0, progress)
    write_json(path, plan, overwrite=overwrite)
    print(format_plan(plan))
    print(f"wrote {path}")
    return 0
