"""Inference on whole records (windows combined) and the Challenge output files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from core.engine import UserError, atomic_write, ensure_new

from .data import preprocess, read_record, windows
from .labels import LabelSpace

TIMELINE_MIN_S = 60.0  # records longer than this also get a per-window timeline


@torch.no_grad()
def predict_signals(module, signals: Iterable[np.ndarray], batch_size: int = 32, hop: Optional[int] = None
                    ) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
    """Preprocessed records ``[(n_leads, L_i)]`` -> record probabilities ``(N, C)`` and, per record,
    ``(window starts (W,), window probabilities (W, C))``. ``signals`` may be a generator: each
    record is consumed once and not kept, so records can stream from disk.

    Each record is covered by windows of the model's length; a record's probability for a
    class is the maximum over its windows (a finding anywhere in the recording counts).
    """
    module.eval()
    device = next(module.parameters()).device
    win = module.window
    queue: List[Tuple[int, np.ndarray]] = []
    outs: List[List[np.ndarray]] = []

    def flush():
        if not queue:
            return
        x = torch.from_numpy(np.stack([w for _, w in queue])).to(device)
        p = torch.sigmoid(module(x).float()).cpu().numpy()
        for (i, _), pi in zip(queue, p):
            outs[i].append(pi)
        queue.clear()

    starts_all = []
    for i, sig in enumerate(signals):
        outs.append([])
        w, starts = windows(sig, win, hop)
        starts_all.append(starts)
        for wi in w:
            queue.append((i, wi))
            if len(queue) >= batch_size:
                flush()
    flush()
    per = [(s, np.stack(o)) for s, o in zip(starts_all, outs)]
    probs = np.stack([wp.max(0) for _, wp in per]) if per else np.zeros((0, len(module.thresholds)))
    return probs, per


def write_challenge_csv(path: Path, record_id: str, codes: Sequence[str], binary: Sequence[int],
                        probs: Sequence[float], overwrite: bool = False) -> None:
    """The 2021 Challenge output file: ``#record_id``; class codes; 0/1 labels; probabilities."""
    with atomic_write(path, overwrite=overwrite) as f:
        f.write(f"#{record_id}\n")
        f.write(",".join(codes) + "\n")
        f.write(",".join(str(int(b)) for b in binary) + "\n")
        f.write(",".join(f"{float(p):.4f}" for p in probs) + "\n")


def read_challenge_csv(path: Path) -> Tuple[str, List[str], np.ndarray, np.ndarray]:
    """Parse a Challenge output file -> (record id, codes, binary (C,), probabilities (C,))."""
    lines = [l.strip() for l in Path(path).read_text().splitlines() if l.strip()]
    if len(lines) != 4 or not lines[0].startswith("#"):
        raise ValueError(f"{path}: not a 4-line Challenge output file")
    codes = lines[1].split(",")
    b = np.array([int(v) for v in lines[2].split(",")])
    p = np.array([float(v) for v in lines[3].split(",")])
    if not (len(codes) == len(b) == len(p)):
        raise ValueError(f"{path}: rows of different lengths")
    return lines[0][1:], codes, b, p


@dataclass
class PredictResult:
    written: List[Path]
    failures: List[str]
    summary: Optional[Path]


def predict_records(module, records: Sequence[Path], out_dir: Path, overwrite: bool = False,
                    batch_size: int = 32, timeline_min_s: float = TIMELINE_MIN_S, log=print,
                    show_progress: bool = True) -> PredictResult:
    """Classify WFDB records; write ``OUT/REC.csv`` per record, ``OUT/summary.csv`` and, for long
    records, ``OUT/REC_timeline.csv``. Bad records are listed in ``failures`` (and
    ``OUT/failures.txt``), the others still get their files. Nothing is overwritten unless
    ``overwrite``; every file appears whole or not at all."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(out, "exists and is not a directory")
    ids = [r.name for r in records]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(records[ids.index(dup[0])], f"record name {dup[0]} occurs more than once in the input")
    ensure_new([out / f"{i}.csv" for i in ids] + [out / "summary.csv"], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    hp = module.hparams
    leads = tuple(hp.leads)
    space = LabelSpace(list(hp.classes))
    th = module.thresholds.detach().cpu().numpy()
    codes, abbrs = space.codes, space.abbreviations
    written, failures, rows = [], [], []
    it = records
    if show_progress:
        from core.engine import progress

        it = progress(records, "predicting", total=len(records))
    for rec_path in it:
        try:
            rec = read_record(rec_path, leads)
            x = preprocess(rec, float(hp.fs), tuple(hp.band_hz))
        except UserError as e:
            failures.append(str(e))
            continue
        probs, per = predict_signals(module, [x], batch_size=batch_size)
        p = probs[0]
        b = (p >= th).astype(int)
        rid = rec.record_id
        write_challenge_csv(out / f"{rid}.csv", rid, codes, b, p, overwrite=overwrite)
        written.append(out / f"{rid}.csv")
        duration = rec.signal.shape[1] / rec.header.fs
        if duration > timeline_min_s:
            starts, wp = per[0]
            tl = out / f"{rid}_timeline.csv"
            with atomic_write(tl, overwrite=True) as f:
                f.write("start_s,end_s,labels," + ",".join(abbrs) + "\n")
                for s, pw in zip(starts, wp):
                    t0 = s / float(hp.fs)
                    t1 = min(t0 + hp.window_s, duration)
                    lab = ";".join(a for a, v, t in zip(abbrs, pw, th) if v >= t)
                    f.write(f"{t0:.2f},{t1:.2f},{lab}," + ",".join(f"{v:.4f}" for v in pw) + "\n")
            written.append(tl)
        rows.append((rid, duration, [a for a, bi in zip(abbrs, b) if bi], p))
    summary = None
    if rows:
        summary = out / "summary.csv"
        with atomic_write(summary, overwrite=overwrite) as f:
            f.write("record_id,duration_s,labels," + ",".join(abbrs) + "\n")
            for rid, dur, labs, p in rows:
                f.write(f"{rid},{dur:.1f},{';'.join(labs)}," + ",".join(f"{v:.4f}" for v in p) + "\n")
        written.append(summary)
    if failures:
        with atomic_write(out / "failures.txt", overwrite=True) as f:
            f.write("\n".join(failures) + "\n")
    return PredictResult(written, failures, summary)


def format_metrics_table(m: Dict, show_empty: bool = False) -> str:
    """A plain-text table: macro metrics, then per class (n positive, AUROC, AUPRC, F1, threshold)."""
    def f(v):
        return "  n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"

    lines = [f"records: {m['n_records']}",
             f"macro AUROC {f(m['macro_auroc'])}  macro AUPRC {f(m['macro_auprc'])}  macro F1 {f(m['macro_f1'])}  "
             f"accuracy {f(m['accuracy'])}  Challenge score {f(m['challenge_score'])}",
             "",
             f"{'class':<12}{'code':<16}{'n_pos':>6}{'AUROC':>8}{'AUPRC':>8}{'F1':>8}{'thresh':>8}"]
    pc = m["per_class"]
    hidden = 0
    for i, name in enumerate(pc["class"]):
        if pc["n_positive"][i] == 0 and not show_empty:
            hidden += 1
            continue
        lines.append(f"{name:<12}{pc['code'][i]:<16}{pc['n_positive'][i]:>6}{f(pc['auroc'][i]):>8}"
                     f"{f(pc['auprc'][i]):>8}{f(pc['f1'][i]):>8}{pc['threshold'][i]:>8.2f}")
    if hidden:
        lines.append(f"({hidden} classes without positive records not shown; all are in the JSON)")
    return "\n".join(lines)
