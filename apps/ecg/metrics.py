"""Metrics of the PhysioNet/CinC Challenge 2021, written from their published definitions.

All functions take ``labels`` (N, C) in {0, 1} and ``scores`` (N, C) probabilities
or ``outputs`` (N, C) binary decisions, for N records and C classes.

- AUROC: area under the ROC curve, piecewise linear between distinct score values (ties
  count half), per class; macro = mean over classes where it is defined.
- AUPRC: sum over distinct thresholds of (recall step) x (precision), i.e. average precision.
- F1: 2TP / (2TP + FP + FN) per class; macro over classes with a non-zero denominator.
- Challenge score: sum of ``weights * A`` where ``A[j, k]`` adds ``1 / |labels ∪ outputs|``
  of each record for every (label j, output k) pair, normalised so that outputting the
  true labels scores 1 and always outputting sinus rhythm scores 0.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .labels import LabelSpace


def _as_bool(x) -> np.ndarray:
    return np.asarray(x).astype(bool)


def auroc_auprc_per_class(labels, scores) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class AUROC and AUPRC ``(C,)`` each; NaN where a class has no positives (or, for
    AUROC, no negatives)."""
    y = _as_bool(labels)
    s = np.asarray(scores, dtype=np.float64)
    n, c = y.shape
    auroc = np.full(c, np.nan)
    auprc = np.full(c, np.nan)
    for k in range(c):
        pos = int(y[:, k].sum())
        neg = n - pos
        if pos == 0:
            continue
        order = np.argsort(-s[:, k], kind="mergesort")
        sk, yk = s[order, k], y[order, k]
        # one point per distinct score value (counting everything >= it)
        last = np.r_[np.nonzero(np.diff(sk))[0], n - 1]
        tp = np.cumsum(yk)[last].astype(np.float64)
        fp = (last + 1) - tp
        tpr = np.r_[0.0, tp / pos]
        ppv = tp / (tp + fp)
        auprc[k] = float(np.sum(np.diff(tpr) * ppv))
        if neg:
            fpr = np.r_[0.0, fp / neg]
            auroc[k] = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    return auroc, auprc


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def f1_per_class(labels, outputs) -> np.ndarray:
    """Per-class F1 ``(C,)``; NaN where a class has no labels and no outputs."""
    y, o = _as_bool(labels), _as_bool(outputs)
    tp = (y & o).sum(0).astype(np.float64)
    fp = (~y & o).sum(0)
    fn = (y & ~o).sum(0)
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)


def accuracy(labels, outputs) -> float:
    """Fraction of records whose whole label set is output exactly."""
    y, o = _as_bool(labels), _as_bool(outputs)
    return float(np.mean(np.all(y == o, axis=1))) if len(y) else float("nan")


def modified_confusion(labels, outputs) -> np.ndarray:
    """``A (C, C)``: ``A[j, k] = sum_i labels[i, j] * outputs[i, k] / max(1, |labels_i ∪ outputs_i|)``."""
    y = _as_bool(labels).astype(np.float64)
    o = _as_bool(outputs).astype(np.float64)
    norm = np.maximum((y.astype(bool) | o.astype(bool)).sum(1), 1).astype(np.float64)
    return (y / norm[:, None]).T @ o


def challenge_score(labels, outputs, weights: np.ndarray, normal_index: int) -> float:
    """The 2021 Challenge score (1 = perfect, 0 = always sinus rhythm); 0 when those coincide."""
    y = _as_bool(labels)
    observed = float(np.sum(weights * modified_confusion(y, outputs)))
    correct = float(np.sum(weights * modified_confusion(y, y)))
    inactive_out = np.zeros_like(y)
    inactive_out[:, normal_index] = True
    inactive = float(np.sum(weights * modified_confusion(y, inactive_out)))
    if correct == inactive:
        return 0.0
    return (observed - inactive) / (correct - inactive)


def challenge_score_for(space: LabelSpace, labels, outputs) -> float:
    """Challenge score over the scored classes of ``space``; NaN if sinus rhythm is not one of them."""
    idx, w, normal = space.scored_subset()
    if normal is None or len(idx) == 0:
        return float("nan")
    y = _as_bool(labels)[:, idx]
    o = _as_bool(outputs)[:, idx]
    return challenge_score(y, o, w, normal)


def evaluate(space: LabelSpace, labels, scores, thresholds: Optional[Sequence[float]] = None) -> Dict:
    """All metrics for one set of records: macro and per-class values as plain floats/lists.
    ``thresholds`` ``(C,)``, or ``(N, C)`` one row per record (records read with different lead
    sets); the per-class ``threshold`` reported is then the median over records."""
    y = _as_bool(labels)
    s = np.asarray(scores, dtype=np.float64)
    th = np.full(s.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    o = s >= th
    auroc, auprc = auroc_auprc_per_class(y, s)
    f1 = f1_per_class(y, o)

    def clean(a):
        return [None if not np.isfinite(v) else float(v) for v in a]

    return {
        "n_records": int(len(y)),
        "macro_auroc": _nanmean(auroc),
        "macro_auprc": _nanmean(auprc),
        "macro_f1": _nanmean(f1),
        "accuracy": accuracy(y, o),
        "challenge_score": challenge_score_for(space, y, o),
        "per_class": {
            "class": space.abbreviations,
            "code": space.codes,
            "n_positive": [int(v) for v in y.sum(0)],
            "auroc": clean(auroc),
            "auprc": clean(auprc),
            "f1": clean(f1),
            "threshold": [float(v) for v in (th if th.ndim == 1 else np.median(th, 0))],
        },
    }


def tune_thresholds(space: LabelSpace, labels, scores, grid: Optional[Sequence[float]] = None,
                    passes: int = 2) -> np.ndarray:
    """Per-class thresholds ``(C,)`` that maximise the Challenge score on these records.

    Coordinate ascent from 0.5 over ``grid``; classes outside the scored set (or all of
    them when sinus rhythm is not in the space) get the threshold that maximises their F1.
    """
    y = _as_bool(labels)
    s = np.asarray(scores, dtype=np.float64)
    c = s.shape[1]
    grid = np.asarray(grid if grid is not None else np.round(np.arange(0.05, 0.951, 0.05), 2))
    th = np.full(c, 0.5)
    idx, w, normal = space.scored_subset()
    scored = set(idx.tolist()) if normal is not None else set()
    # F1 for the classes the Challenge does not score
    for k in range(c):
        if k in scored or not y[:, k].any():
            continue
        f = [f1_per_class(y[:, [k]], s[:, [k]] >= g)[0] for g in grid]
        f = np.nan_to_num(np.asarray(f), nan=-1.0)
        th[k] = float(grid[int(np.argmax(f))])
    if not scored:
        return th
    ys, ss = y[:, idx], s[:, idx]
    ts = th[idx].copy()

    def score(t):
        return challenge_score(ys, ss >= t, w, normal)

    best = score(ts)
    for _ in range(passes):
        improved = False
        for j in range(len(idx)):
            keep = ts[j]
            for g in grid:
                ts[j] = g
                v = score(ts)
                if v > best + 1e-12:
                    best, keep, improved = v, g, True
            ts[j] = keep
        if not improved:
            break
    th[idx] = ts
    return th
