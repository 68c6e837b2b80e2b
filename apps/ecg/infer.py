"""Inference on whole records (windows combined), the Challenge output files, and the evaluate/predict
commands (:func:`evaluate_checkpoint`, :func:`predict_checkpoint`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from core.engine import ItemFailures, UserError, atomic_write, ensure_new, resolve_checkpoint, write_json

from .data import lead_set_name, windows
from .dataset import scan_records, stream_records
from .labels import LabelSpace

TIMELINE_MIN_S = 60.0  # records longer than this also get a per-window timeline


def _room(buf: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``buf (R, C)`` with at least ``n`` rows, doubling; new rows hold ``fill``.

    Per-record outputs go into one such block rather than a small array per record: those, kept
    while streamed signals come and go, fragment the C heap (RSS grew by tens of KB per record).
    """
    if n <= len(buf):
        return buf
    extra = np.full((max(n, 2 * len(buf)) - len(buf), buf.shape[1]), fill, dtype=buf.dtype)
    return np.concatenate([buf, extra])


@torch.no_grad()
def predict_signals(module, signals: Iterable[np.ndarray], batch_size: int = 32, hop: Optional[int] = None,
                    keep_windows: bool = True) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
    """Preprocessed records ``[(n_leads, L_i)]`` -> record probabilities ``(N, C)`` and, per record,
    ``(window starts (W,), window probabilities (W, C))``. ``signals`` may be a generator: each
    record is consumed once and not kept, so records can stream from disk. With
    ``keep_windows=False`` only a running maximum ``(C,)`` is kept per record and the per-record
    list comes back empty (same probabilities: the maximum is exact in any order).

    Each record is covered by windows of the model's length; a record's probability for a
    class is the maximum over its windows (a finding anywhere in the recording counts).
    Windows of consecutive records share batches of ``batch_size``.
    """
    module.eval()
    device = next(module.parameters()).device
    win = module.window
    n_cls = len(module.thresholds)
    queue: List[Tuple[int, np.ndarray]] = []
    outs: List[List[np.ndarray]] = []
    best = np.full((0 if keep_windows else 64, n_cls), -np.inf, dtype=np.float32)  # running max per record

    def flush():
        if not queue:
            return
        x = torch.from_numpy(np.stack([w for _, w in queue])).to(device)
        p = torch.sigmoid(module(x).float()).cpu().numpy()
        for (i, _), pi in zip(queue, p):
            if keep_windows:
                outs[i].append(pi)
            else:
                np.maximum(best[i], pi, out=best[i])
        queue.clear()

    starts_all = []
    n = 0
    for i, sig in enumerate(signals):
        n = i + 1
        if keep_windows:
            outs.append([])
        else:
            best = _room(best, n, -np.inf)
        w, starts = windows(sig, win, hop)
        if keep_windows:
            starts_all.append(starts)
        for wi in w:
            queue.append((i, wi))
            if len(queue) >= batch_size:
                flush()
    flush()
    if not keep_windows:
        return best[:n].copy(), []
    per = [(s, np.stack(o)) for s, o in zip(starts_all, outs)]
    probs = np.stack([wp.max(0) for _, wp in per]) if per else np.zeros((0, n_cls))
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
    """Files written (per record, timelines, ``summary.csv``), one line per failed record, the summary."""

    written: List[Path]
    failures: List[str]
    summary: Optional[Path]
    leads_used: Dict[str, int] = field(default_factory=dict)   # records per lead set read


def model_lead_sets(module, leads: Optional[Sequence[str]] = None) -> Optional[List[Tuple[str, ...]]]:
    """The lead sets records are read with: ``leads`` when given (checked against the model's),
    else a lead-masked model's sets (largest first), else ``None`` (every model lead required)."""
    if leads:
        module.set_index(leads)  # UserError when the model was not trained for it
        return [tuple(leads)]
    return [tuple(s) for s in module.lead_sets] if getattr(module, "lead_sets", None) else None


def predict_records(module, records: Sequence[Path], out_dir: Path, overwrite: bool = False,
                    batch_size: int = 32, timeline_min_s: float = TIMELINE_MIN_S, log=print,
                    show_progress: bool = True, num_workers: int = 0,
                    leads: Optional[Sequence[str]] = None,
                    on_failure: Optional[Callable[[str], None]] = None) -> PredictResult:
    """Classify WFDB records; write ``OUT/REC.csv`` per record, ``OUT/summary.csv`` and, for long
    records, ``OUT/REC_timeline.csv``. Bad records are listed in ``failures`` (and
    ``OUT/failures.txt``), the others still get their files. Nothing is overwritten unless
    ``overwrite``; every file appears whole or not at all.

    Records stream (:func:`apps.ecg.dataset.stream_records`, ``num_workers`` processes reading
    ahead): memory holds a few signals plus one summary row ``(C,)`` per record. A lead-masked
    model reads each record with the largest of its lead sets the record has (or ``leads``), uses
    that set's thresholds, and names the set in ``summary.csv`` (column ``leads``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(out, "exists and is not a directory")
    ids = [r.name for r in records]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(records[ids.index(dup[0])], f"record name {dup[0]} occurs more than once in the input")
    ensure_new([out / f"{i}.csv" for i in ids] + [out / f"{i}_timeline.csv" for i in ids]
               + [out / "summary.csv", out / "failures.txt"], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    hp = module.hparams
    space = LabelSpace(list(hp.classes))
    sets = model_lead_sets(module, leads)
    leads = tuple(hp.leads)
    codes, abbrs = space.codes, space.abbreviations
    written, failures, rows = [], [], []
    counts: Dict[str, int] = {}
    row_probs = np.zeros((64, len(codes)), dtype=np.float32)  # summary probabilities, one row per record
    it: Iterable = stream_records(records, leads, float(hp.fs), tuple(hp.band_hz), num_workers, sets)
    if show_progress:
        from core.engine import progress

        it = progress(it, "predicting", total=len(records))
    for r in it:
        if r.error is not None:
            failures.append(r.error)
            if on_failure is not None:  # said when it happens, so a log shows it in place
                on_failure(r.error)
            continue
        # one record per call, as before streaming: its windows batch alone, so outputs are unchanged
        probs, per = predict_signals(module, [r.signal], batch_size=batch_size)
        p = probs[0]
        used = r.leads or leads
        th = module.thresholds_for(used) if hasattr(module, "thresholds_for") else module.thresholds.numpy()
        b = (p >= th).astype(int)
        rid = r.record_id
        write_challenge_csv(out / f"{rid}.csv", rid, codes, b, p, overwrite=overwrite)
        written.append(out / f"{rid}.csv")
        duration = r.duration_s
        if duration > timeline_min_s:
            starts, wp = per[0]
            tl = out / f"{rid}_timeline.csv"
            with atomic_write(tl, overwrite=overwrite) as f:
                f.write("start_s,end_s,labels," + ",".join(abbrs) + "\n")
                for s, pw in zip(starts, wp):
                    t0 = s / float(hp.fs)
                    t1 = min(t0 + hp.window_s, duration)
                    lab = ";".join(a for a, v, t in zip(abbrs, pw, th) if v >= t)
                    f.write(f"{t0:.2f},{t1:.2f},{lab}," + ",".join(f"{v:.4f}" for v in pw) + "\n")
            written.append(tl)
        row_probs = _room(row_probs, len(rows) + 1, 0.0)
        row_probs[len(rows)] = p
        rows.append((rid, duration, ";".join(a for a, bi in zip(abbrs, b) if bi), " ".join(used)))
        counts[lead_set_name(used)] = counts.get(lead_set_name(used), 0) + 1
    summary = None
    if rows:
        summary = out / "summary.csv"
        with atomic_write(summary, overwrite=overwrite) as f:
            f.write("record_id,duration_s,labels," + ",".join(abbrs) + ",leads\n")
            for (rid, dur, labs, used), p in zip(rows, row_probs):
                f.write(f"{rid},{dur:.1f},{labs}," + ",".join(f"{v:.4f}" for v in p) + f",{used}\n")
        written.append(summary)
    if failures and written:
        with atomic_write(out / "failures.txt", overwrite=True) as f:
            f.write("\n".join(failures) + "\n")
    return PredictResult(written, failures, summary, counts)


def evaluate_records(module, records: Sequence[Path], batch_size: int = 32, num_workers: int = 0,
                     show_progress: bool = True, leads: Optional[Sequence[str]] = None
                     ) -> Tuple[Optional[Dict], List[str], List[str]]:
    """Metrics of ``module`` on labelled records, streamed: labels ``(N, C)`` from a header scan,
    each signal read, preprocessed and classified as it comes (``num_workers`` processes read
    ahead), so memory holds a few signals plus ``(C,)`` probabilities and labels per record.

    Returns the metrics dict of :func:`apps.ecg.metrics.evaluate` (``None`` when no record could
    be used) with ``leads_used`` (records per lead set), the ids of the records evaluated, and one
    line per bad record, in input order. A lead-masked model reads each record with the largest
    of its lead sets the record has, or with ``leads`` for all, and binarises with that set's
    thresholds.
    """
    from .metrics import evaluate

    hp = module.hparams
    space = LabelSpace(list(hp.classes))
    # signal files are left to the read, so a bad one is named as read_record names it
    sets = model_lead_sets(module, leads)
    index, _ = scan_records(records, tuple(hp.leads), float(hp.fs), space, tuple(hp.band_hz),
                            show_progress=show_progress, check_files=False, num_workers=num_workers,
                            lead_sets=sets)
    scanned = set(index.positions)
    failed = [(k, line) for k, line in zip((k for k in range(len(records)) if k not in scanned), index.failures)]
    ok: List[int] = []
    used: List[Tuple[str, ...]] = []

    def signals():
        it: Iterable = stream_records(index.paths, index.leads, index.fs, index.band, num_workers, sets)
        if show_progress:
            from core.engine import progress

            it = progress(it, "evaluating", total=len(index.paths))
        for k, r in enumerate(it):
            if r.error is None:
                ok.append(k)
                used.append(r.leads or index.leads)
                yield r.signal
            else:
                failed.append((index.positions[k], r.error))

    probs, _ = predict_signals(module, signals(), batch_size=batch_size, keep_windows=False)
    skipped = [line for _, line in sorted(failed, key=lambda t: t[0])]
    ids = [index.ids[k] for k in ok]
    if not ok:
        return None, ids, skipped
    th_of = getattr(module, "thresholds_for", lambda s: module.thresholds.numpy())
    th = np.stack([th_of(u) for u in used])  # (N, C): each record with its lead set's thresholds
    m = evaluate(space, index.labels[ok], probs, th)
    counts: Dict[str, int] = {}
    for u in used:
        counts[lead_set_name(u)] = counts.get(lead_set_name(u), 0) + 1
    m["leads_used"] = counts
    return m, ids, skipped


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


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """The trained ``ECGModule`` of a checkpoint file or run folder, on ``device`` (UserError if unusable)."""
    from core.engine import load_module, resolve_device

    from .module import ECGModule

    dev = resolve_device(device)
    return load_module(resolve_checkpoint(path), ECGModule).to(dev)


def default_eval_out(ckpt: Path, data: Sequence[str | Path]) -> Path:
    """``RUN/eval_<data folder name>.json`` next to the run the checkpoint belongs to."""
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run / f"eval_{Path(data[0]).resolve().name or 'data'}.json"


def evaluate_checkpoint(checkpoint: str | Path, data: Sequence[str | Path], out: Optional[str | Path] = None,
                        overwrite: bool = False, batch_size: int = 32, num_workers: int = 0,
                        device: str = "cpu", leads: Optional[Sequence[str]] = None) -> int:
    """``ssm-ecg evaluate``: metrics table on stdout and JSON at ``out`` (default RUN/eval_<data>.json).
    Returns the exit code: 2 when some records could not be used (each named on stderr once)."""
    from .data import find_records

    ckpt = resolve_checkpoint(checkpoint)
    out = Path(out) if out else default_eval_out(ckpt, data)
    ensure_new(out, overwrite)
    module = load_checkpoint(ckpt, device)
    records = find_records(data)
    m, ids, skipped = evaluate_records(module, records, batch_size=batch_size, num_workers=num_workers, leads=leads)
    failures = ItemFailures("record")
    for line in skipped:
        failures.fail(*_split_item(line))
    if m is None:
        raise UserError(data[0], "no usable record")
    m["checkpoint"] = str(ckpt)
    m["skipped"] = skipped
    m["records"] = ids
    print(format_metrics_table(m))
    print("leads used: " + ", ".join(f"{k}: {v} records" for k, v in m["leads_used"].items()))
    write_json(out, m, overwrite=overwrite)
    print(f"\nmetrics: {out}")
    if failures:
        return failures.finish(len(records), f"{out} (metrics of the other records)")
    return 0


def predict_checkpoint(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path,
                       overwrite: bool = False, batch_size: int = 32, num_workers: int = 0,
                       device: str = "cpu", leads: Optional[Sequence[str]] = None) -> int:
    """``ssm-ecg predict``: Challenge files per record under ``out``; one line per failed record, a
    summary line. Returns the exit code (2 if any record failed)."""
    from core.engine import OutputFolder

    from .data import find_records

    module = load_checkpoint(checkpoint, device)
    records = find_records(inputs)
    failures = ItemFailures("record")
    with OutputFolder(out):  # removed again if not one record could be written
        res = predict_records(module, records, Path(out), overwrite=overwrite, batch_size=batch_size,
                              num_workers=num_workers, leads=leads,
                              on_failure=lambda line: failures.fail(*_split_item(line)))
    n_ok = len(records) - len(res.failures)
    if res.summary:
        print(f"{n_ok} of {len(records)} records classified; outputs in {out}/ (summary: {res.summary})")
    if res.leads_used:
        print("leads used: " + ", ".join(f"{k}: {v} records" for k, v in res.leads_used.items()))
    return failures.finish(len(records)) if failures else 0


def _split_item(line: str) -> Tuple[str, str]:
    """``"path: problem"`` -> (path, problem), for one-line-per-item reporting."""
    item, _, problem = line.partition(": ")
    return (item, problem) if problem else ("record", line)
