"""Datasets for 3-D segmentation: MSD ``dataset.json`` datalists, nnU-Net folders, checked NIfTI loading.

A *case* is ``{"name": str, "image": [channel paths], "label": path | None}``. Loading goes through
:func:`load_case`, which validates every file (readable NIfTI, 3-D, finite, all channels on one grid)
and raises :class:`core.engine.UserError` naming the case and the problem. The MONAI transform
pipelines built on top of it live in :mod:`apps.medseg.transforms`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from core.engine import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def is_nifti_name(path: str | Path) -> bool:
    """True for ``*.nii`` / ``*.nii.gz`` file names."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti(name: str) -> str:
    """``CASE_0000.nii.gz`` -> ``CASE_0000``."""
    low = name.lower()
    for s in NIFTI_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


# --------------------------------------------------------------------------- datalists

def _resolve(base: Path, p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else (base / p)


def _as_list(x) -> List:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def read_datalist(path: str | Path, check_files: bool = True) -> Dict[str, List[dict]]:
    """Read an MSD-style ``dataset.json``: ``{"training": [{"image", "label"}], "validation"?, "test"?}``.

    ``image`` may be one path or a list of channel paths; paths are relative to the json file.
    ``test`` entries may be plain strings. Returns ``{"training": cases, "validation": cases,
    "test": cases, "labels": {...} | None, "num_channels": int}``.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(p, "datalist not found")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(p, f"not a valid JSON datalist ({type(e).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise UserError(p, 'expected a JSON object with a "training" list of {"image", "label"}')
    base = p.parent
    out: Dict[str, list] = {}
    for split in ("training", "validation", "test"):
        cases = []
        for i, entry in enumerate(meta.get(split) or []):
            if isinstance(entry, (str, list)):
                entry = {"image": entry}
            if not isinstance(entry, dict) or "image" not in entry:
                raise UserError(p, f'{split}[{i}] has no "image"')
            imgs = [_resolve(base, x) for x in _as_list(entry["image"])]
            lab = _resolve(base, entry["label"]) if entry.get("label") else None
            if split != "test" and lab is None:
                raise UserError(p, f'{split}[{i}] has no "label"')
            name = strip_nifti(imgs[0].name)
            m = _CHANNEL_RE.match(name)
            cases.append({"name": m.group("case") if m else name, "image": [str(x) for x in imgs],
                          "label": str(lab) if lab else None})
        out[split] = cases
    if not out["training"]:
        raise UserError(p, '"training" is empty')
    _check_channel_counts(p, out["training"] + out["validation"] + out["test"])
    if check_files:
        for c in out["training"] + out["validation"] + out["test"]:
            for f in c["image"] + ([c["label"]] if c["label"] else []):
                if not Path(f).is_file():
                    raise UserError(f, f"file listed in {p.name} (case {c['name']}) not found")
    out["labels"] = meta.get("labels")
    out["channel_names"] = meta.get("channel_names") or meta.get("modality")  # modality, for the planner
    out["num_channels"] = len(out["training"][0]["image"])
    return out


def _check_channel_counts(where, cases: Sequence[dict]) -> None:
    counts = {len(c["image"]) for c in cases}
    if len(counts) > 1:
        raise UserError(where, f"cases have different numbers of channels {sorted(counts)}")


def group_channel_files(files: Sequence[Path]) -> Tuple[Dict[str, List[Path]], List[Tuple[str, str]]]:
    """nnU-Net naming: ``CASE_0000.nii.gz, CASE_0001.nii.gz`` -> ``{"CASE": [ch0, ch1]}``.

    Files without a ``_XXXX`` suffix are single-channel cases. Returns ``(cases, problems)`` where
    problems are ``(case, message)`` for non-NIfTI files and gaps in the channel numbering.
    """
    groups: Dict[str, Dict[int, Path]] = {}
    problems: List[Tuple[str, str]] = []
    for f in sorted(files):
        if f.name.startswith("."):
            continue
        if not is_nifti_name(f.name):
            problems.append((f.name, f"{f}: not a NIfTI file (expected .nii or .nii.gz)"))
            continue
        stem = strip_nifti(f.name)
        m = _CHANNEL_RE.match(stem)
        case, ch = (m.group("case"), int(m.group("ch"))) if m else (stem, 0)
        if ch in groups.setdefault(case, {}):
            problems.append((case, f"{f}: duplicate channel {ch} for case {case}"))
            continue
        groups[case][ch] = f
    cases: Dict[str, List[Path]] = {}
    for case, chans in groups.items():
        want = list(range(max(chans) + 1))
        missing = [c for c in want if c not in chans]
        if missing:
            names = ", ".join(f"{case}_{c:04d}.nii.gz" for c in missing)
            problems.append((case, f"{case}: missing channel file(s) {names}"))
            continue
        cases[case] = [chans[c] for c in want]
    return cases, problems


def read_nnunet_dir(root: str | Path) -> Dict[str, List[dict]]:
    """nnU-Net raw folder: ``imagesTr/CASE_XXXX.nii.gz``, ``labelsTr/CASE.nii.gz``, optional ``imagesTs``.

    Returns the same structure as :func:`read_datalist`; a ``dataset.json`` with ``channel_names``
    and ``labels`` (nnU-Net v2) is read when present, and fixes the number of channels.
    """
    root = Path(root)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise UserError(root, "not an nnU-Net dataset folder (needs imagesTr/ and labelsTr/)")
    meta = {}
    if (root / "dataset.json").is_file():
        try:
            meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(root / "dataset.json", "not valid JSON") from None
    n_ch = len(meta.get("channel_names") or meta.get("modality") or {}) or None
    out: Dict[str, list] = {"training": [], "validation": [], "test": []}
    for split, folder in (("training", img_dir), ("test", root / "imagesTs")):
        if not folder.is_dir():
            continue
        groups, problems = group_channel_files(list(folder.iterdir()))
        if problems:
            raise UserError(problems[0][1])
        for case, chans in sorted(groups.items()):
            if n_ch is not None and len(chans) != n_ch:
                raise UserError(folder, f"case {case} has {len(chans)} channel(s), dataset.json says {n_ch}")
            lab = None
            if split == "training":
                lab = lab_dir / f"{case}.nii.gz"
                if not lab.is_file():
                    lab = lab_dir / f"{case}.nii"
                if not lab.is_file():
                    raise UserError(lab_dir / f"{case}.nii.gz", f"label for case {case} not found")
            out[split].append({"name": case, "image": [str(c) for c in chans],
                               "label": str(lab) if lab else None})
    if not out["training"]:
        raise UserError(img_dir, "no training cases found")
    _check_channel_counts(root, out["training"] + out["test"])
    out["labels"] = meta.get("labels")
    out["channel_names"] = meta.get("channel_names") or meta.get("modality")  # modality, for the planner
    out["num_channels"] = len(out["training"][0]["image"])
    return out


def load_dataset(datalist: Optional[str] = None, data_dir: Optional[str] = None) -> Dict[str, list]:
    """``--datalist FILE`` or ``--data-dir DIR`` (nnU-Net folder, or a folder holding dataset.json)."""
    if (datalist is None) == (data_dir is None):
        raise UserError("give exactly one of --datalist FILE or --data-dir DIR")
    if datalist is not None:
        return read_datalist(datalist)
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError(d, "data directory not found")
    js = d / "dataset.json"
    if js.is_file():  # MSD datasets ship a datalist with "training"; nnU-Net v2's dataset.json has none
        try:
            has_list = isinstance(json.loads(js.read_text(encoding="utf-8")).get("training"), list)
        except (ValueError, AttributeError):
            has_list = False
        if has_list or not (d / "imagesTr").is_dir():
            return read_datalist(js)
    if (d / "imagesTr").is_dir():
        return read_nnunet_dir(d)
    raise UserError(d, "neither an nnU-Net folder (imagesTr/, labelsTr/) nor a folder with dataset.json")


def load_data(data: str | Path) -> Dict[str, list]:
    """``--data``: a dataset.json file, or a folder (nnU-Net raw, or holding dataset.json)."""
    p = Path(data)
    return load_dataset(str(p), None) if p.is_file() else load_dataset(None, str(p))


def split_validation(ds: Dict[str, list], val_fraction: float = 0.2, seed: int = 0) -> Tuple[list, list]:
    """Training and validation cases: the datalist's own ``validation`` split, else a seeded hold-out.

    With a single labelled case, the same case is used for validation (reported, not hidden).
    """
    train = list(ds["training"])
    if ds.get("validation"):
        return train, list(ds["validation"])
    if len(train) < 2:
        return train, list(train)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train))
    n_val = max(1, int(round(val_fraction * len(train))))
    return [train[i] for i in sorted(idx[n_val:])], [train[i] for i in sorted(idx[:n_val])]


def find_input_cases(inputs: Sequence[str | Path]) -> Tuple[Dict[str, List[Path]], List[Tuple[str, str]]]:
    """``predict -i``: folders in nnU-Net naming and/or single files -> ``(cases, problems)``."""
    files: List[Path] = []
    problems: List[Tuple[str, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files.extend(x for x in p.iterdir() if x.is_file())
        elif p.is_file():
            files.append(p)
        else:
            problems.append((p.name, f"{p}: input not found"))
    cases, more = group_channel_files(files)
    return cases, problems + more


# --------------------------------------------------------------------------- checked loading

def _load_nifti(path: Path, case: str) -> nib.Nifti1Image:
    if not is_nifti_name(path):
        raise UserError(path, f"case {case}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for junk files
        raise UserError(path, f"case {case}: cannot read NIfTI ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UserError(path, f"case {case}: not a NIfTI file ({type(img).__name__})")
    return img


def _squeeze_to_3d(shape: Tuple[int, ...], path: Path, case: str) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise UserError(path, f"case {case}: expected a 3-D volume, got shape {shape}")
    if min(shape) < 2:
        raise UserError(path, f"case {case}: degenerate volume shape {shape}")
    return shape


def check_same_grid(ref: nib.Nifti1Image, other: nib.Nifti1Image, other_path: Path, case: str,
                    what: str = "channel") -> None:
    """Raise if ``other`` is not on ``ref``'s voxel grid (shape and affine to 1e-3 mm)."""
    rs, os_ = ref.shape[:3], other.shape[:3]
    if tuple(rs) != tuple(os_):
        raise UserError(other_path, f"case {case}: {what} is on a different grid (shape {tuple(os_)} vs {tuple(rs)})")
    if not np.allclose(ref.affine, other.affine, atol=1e-3, rtol=0):
        raise UserError(other_path, f"case {case}: {what} is on a different grid (affine differs from channel 0)")


def load_case(image_paths: Sequence[str | Path], label_path: Optional[str | Path] = None,
              case: Optional[str] = None) -> Tuple[np.ndarray, Optional[np.ndarray], nib.Nifti1Image]:
    """Read and validate one case.

    Returns ``image`` float32 (C, X, Y, Z) in the files' own voxel order, ``label`` int64 (X, Y, Z)
    or None, and the channel-0 NIfTI image (its header/affine define the case's grid).
    """
    paths = [Path(p) for p in image_paths]
    case = case or strip_nifti(paths[0].name)
    if not paths:
        raise UserError(f"case {case}: no image files")
    ref = None
    chans = []
    for p in paths:
        if not p.is_file():
            raise UserError(p, f"case {case}: channel file not found")
        img = _load_nifti(p, case)
        shape3 = _squeeze_to_3d(img.shape, p, case)
        if ref is None:
            ref = img
        else:
            check_same_grid(ref, img, p, case)
        try:
            arr = np.asarray(img.dataobj, dtype=np.float32).reshape(shape3)
        except Exception as e:
            raise UserError(p, f"case {case}: corrupt or truncated NIfTI data ({type(e).__name__})") from None
        if not np.isfinite(arr).all():
            n = int((~np.isfinite(arr)).sum())
            raise UserError(p, f"case {case}: {n} non-finite voxel(s) (NaN/inf)")
        chans.append(arr)
    image = np.stack(chans, 0)
    label = None
    if label_path is not None:
        lp = Path(label_path)
        if not lp.is_file():
            raise UserError(lp, f"case {case}: label file not found")
        limg = _load_nifti(lp, case)
        shape3 = _squeeze_to_3d(limg.shape, lp, case)
        check_same_grid(ref, limg, lp, case, what="label")
        try:
            lab = np.asarray(limg.dataobj, dtype=np.float32).reshape(shape3)
        except Exception as e:
            raise UserError(lp, f"case {case}: corrupt or truncated NIfTI data ({type(e).__name__})") from None
        if not np.isfinite(lab).all() or lab.min() < 0 or not np.allclose(lab, np.round(lab)):
            raise UserError(lp, f"case {case}: label must hold non-negative integers")
        label = np.round(lab).astype(np.int64)
    return image, label, ref
