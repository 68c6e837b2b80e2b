"""Self-contained demo: synthetic 12-lead records in the Challenge format -> tiny model -> evaluate
-> predict. No downloads; a couple of minutes on a laptop CPU.

The generator draws beats as sums of Gaussian waves (P, Q, R, S, T) projected on 12 lead axes,
with class-specific rhythm and morphology: sinus rhythm, sinus bradycardia/tachycardia, atrial
fibrillation (irregular RR, no P wave, fibrillatory baseline), first-degree AV block (long PR)
and premature ventricular contractions (early, wide beats). Half of the PVC records use the
equivalent code VPB (17338001), as some Challenge sources do.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from core.engine import atomic_path, prepare_demo_dir

from .data import LEADS_12

CODES = {"NSR": "426783006", "SB": "426177001", "STach": "427084000", "AF": "164889003",
         "IAVB": "270492004", "PVC": "427172004", "VPB": "17338001"}

# Approximate frontal/horizontal lead axes (x: left, y: down, z: anterior), unit length.
_LEAD_AXES = np.array([
    [1.0, 0.0, 0.0], [0.5, 0.87, 0.0], [-0.5, 0.87, 0.0], [-0.87, -0.5, 0.0], [0.87, -0.5, 0.0], [0.0, 1.0, 0.0],
    [-0.6, 0.0, 0.8], [-0.3, 0.0, 0.95], [0.0, 0.0, 1.0], [0.4, 0.0, 0.9], [0.75, 0.0, 0.65], [0.95, 0.0, 0.3],
])


def _wave(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def synth_ecg(rng: np.random.Generator, labels: Sequence[str], fs: float, duration: float) -> np.ndarray:
    """One synthetic record ``(12, round(fs * duration))`` in mV with the given class abbreviations."""
    n = int(round(fs * duration))
    t = np.arange(n) / fs
    af, pvc = "AF" in labels, ("PVC" in labels or "VPB" in labels)
    hr = {"SB": rng.uniform(42, 55), "STach": rng.uniform(108, 150)}.get(
        next((l for l in labels if l in ("SB", "STach")), ""), rng.uniform(62, 95))
    if af:
        hr = rng.uniform(75, 140)
    pr = rng.uniform(0.27, 0.34) if "IAVB" in labels else rng.uniform(0.13, 0.18)
    # per-record heart vectors for P, QRS (R and S) and T waves
    axis = rng.normal([0.6, 0.7, 0.3], 0.15)
    vec = {"P": 0.15 * axis, "R": 1.2 * axis + rng.normal(0, 0.1, 3), "S": -0.35 * np.array([0.2, 0.3, -1.0]),
           "T": 0.3 * axis + rng.normal(0, 0.05, 3)}
    proj = {k: _LEAD_AXES @ v for k, v in vec.items()}
    x = np.zeros((12, n))
    rr_mean = 60.0 / hr
    beat = rng.uniform(0.1, 0.5)
    while beat < duration + 1:
        rr = rr_mean * (np.exp(rng.normal(0, 0.18)) if af else 1 + rng.normal(0, 0.02))
        if pvc and rng.random() < 0.2 and beat > 0.5:
            # premature, wide, discordant ventricular beat, then a compensatory pause
            tb = beat - 0.35 * rr
            x += -1.6 * proj["R"][:, None] * _wave(t, tb, 0.045)[None]
            x += 0.5 * proj["T"][:, None] * -_wave(t, tb + 0.32, 0.07)[None]
            beat += 1.35 * rr
            continue
        if not af:
            x += proj["P"][:, None] * _wave(t, beat - pr, 0.025)[None]
        x += proj["R"][:, None] * _wave(t, beat, 0.012)[None]
        x += proj["S"][:, None] * _wave(t, beat + 0.03, 0.012)[None]
        x += proj["T"][:, None] * _wave(t, beat + 0.25 + 0.1 * rr_mean, 0.05)[None]
        beat += rr
    if af:  # fibrillatory waves, 4-8 Hz, mostly in V1 and inferior leads
        f = rng.uniform(4, 8)
        x += 0.06 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))[None] * np.array(
            [0.3, 1, 0.8, 0.5, 0.3, 0.9, 1.2, 0.8, 0.5, 0.4, 0.3, 0.3])[:, None]
    x += 0.15 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.28))[None]  # baseline wander
    x += rng.normal(0, 0.02, x.shape)
    return x.astype(np.float32)


def write_challenge_record(folder: Path, name: str, signal_mv: np.ndarray, fs: float, dx: Sequence[str],
                           age: int = 60, sex: str = "Female", leads: Sequence[str] = LEADS_12,
                           gain: float = 1000.0) -> Path:
    """Write ``folder/name.hea`` + ``name.mat`` (MATLAB v4 int16 ``val``, leads x samples, byte offset
    24) exactly like the Challenge files. Returns the record path (no extension)."""
    import scipy.io
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    val = np.clip(np.round(signal_mv * gain), -32768, 32767).astype(np.int16)
    n_sig, n = val.shape
    with atomic_path(folder / f"{name}.mat", overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, {"val": val}, format="4")
    checks = [int(((int(v.astype(np.int64).sum()) + 32768) % 65536) - 32768) for v in val]
    rec = wfdb.Record(record_name=name, n_sig=n_sig, fs=fs, sig_len=n, file_name=[f"{name}.mat"] * n_sig,
                      fmt=["16"] * n_sig, samps_per_frame=[1] * n_sig, byte_offset=[24] * n_sig,
                      adc_gain=[gain] * n_sig, baseline=[0] * n_sig, units=["mV"] * n_sig, adc_res=[16] * n_sig,
                      adc_zero=[0] * n_sig, init_value=[int(v[0]) for v in val], checksum=checks,
                      block_size=[0] * n_sig, sig_name=list(leads),
                      comments=[f"Age: {age}", f"Sex: {sex}", f"Dx: {','.join(dx)}", "Rx: Unknown", "Hx: Unknown",
                                "Sx: Unknown"])
    rec.wrheader(write_dir=str(folder))
    return folder / name


def _draw_labels(rng: np.random.Generator) -> List[str]:
    rhythm = rng.choice(["NSR", "NSR", "SB", "STach", "AF"])
    labels = [str(rhythm)]
    if rhythm != "AF" and rng.random() < 0.3:
        labels.append("IAVB")
    if rng.random() < 0.3:
        labels.append("PVC" if rng.random() < 0.5 else "VPB")
    return labels


def make_dataset(folder: Path, n: int, seed: int, prefix: str = "S", fs_choices=(500.0, 500.0, 500.0, 257.0, 1000.0),
                 duration: float = 10.0, long_records: int = 0) -> List[Tuple[str, List[str]]]:
    """Write ``n`` labelled synthetic records (plus ``long_records`` 2-minute ones at 257 Hz)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n + long_records):
        labels = _draw_labels(rng)
        long = i >= n
        fs = 257.0 if long else float(rng.choice(fs_choices))
        sig = synth_ecg(rng, labels, fs, 120.0 if long else duration)
        name = f"{prefix}{i:04d}"
        write_challenge_record(folder, name, sig, fs, [CODES[l] for l in labels], age=int(rng.integers(20, 90)),
                               sex=str(rng.choice(["Male", "Female"])))
        out.append((name, labels))
    return out


def run_demo(out: Path, seed: int = 0, overwrite: bool = False, n_train: int = 120, max_epochs: int = 12,
             max_time: str = "00:00:00:50") -> int:
    """Synthetic data -> train (tiny preset, <= ``max_time``) -> evaluate -> predict, all under ``out``.
    Re-runnable as is: a folder an earlier demo made is replaced. Returns the exit code."""
    from .infer import evaluate_checkpoint, predict_checkpoint
    from .train import DEFAULTS, train

    t0 = time.time()
    out = prepare_demo_dir(out, overwrite)
    data, new = out / "data" / "train", out / "data" / "new"
    print(f"writing {n_train} synthetic training records to {data}/ and 7 new ones to {new}/ ...", flush=True)
    make_dataset(data, n_train, seed)
    make_dataset(new, 6, seed + 1, prefix="N", long_records=1)
    cfg = {**DEFAULTS, "model": {"preset": "tiny"}, "fs": 250.0, "window_s": 8.0, "batch_size": 16, "lr": 3e-3}
    run = out / "run"
    run.mkdir(exist_ok=True)
    m = train([str(data)], run, cfg, seed=seed, trainer_kwargs={"max_epochs": max_epochs, "max_time": max_time},
              progress=True)
    v = m["validation"]
    print(f"trained {m['epochs'] + 1} epoch(s) in {m['train_seconds']:.0f} s; validation macro AUROC "
          f"{v['macro_auroc']:.3f}, Challenge score {v['challenge_score']:.3f}", flush=True)
    ev = out / "evaluation.json"
    evaluate_checkpoint(run, [new], ev)
    pred = out / "predictions"
    rc = predict_checkpoint(run, [new], pred)
    print(f"\ndemo done in {time.time() - t0:.0f} s\n"
          f"  records:     {data}/ (training), {new}/ (new, incl. a 2-min 257 Hz recording)\n"
          f"  checkpoint:  {m['checkpoint']}\n"
          f"  metrics:     {run / 'metrics.json'} (validation), {ev} (new records)\n"
          f"  predictions: {pred}/ (one Challenge CSV per record, summary.csv, N0006_timeline.csv)")
    return rc
