"""ECG benchmark: CNN + BiMamba (apps.ecg "small") vs a 1-D ResNet vs a Transformer encoder of
about the same parameter count.

1. Throughput (records/s) of training steps (forward + backward + AdamW) and of inference, at
   10 s and at 5 min of 12-lead signal at 500 Hz, and the peak memory (RSS growth over the
   process after the model is built; each measurement runs in its own process).
2. 5-fold cross-validated macro AUROC on the 50 real records of ../shared/data/ecg/cinc2021-sample
   (26 scored classes; macro over classes with positives and negatives): mean of the folds and
   the pooled out-of-fold value.
3. (``--lead-sets``) 5-fold CV macro AUROC per Challenge lead set (12, 6, 4, 3, 2): one lead-masked
   model for all of them against one model trained per lead set.

    nice -n 10 python bench/bench_ecg.py [--quick] [--json OUT.json]
    nice -n 10 python bench/bench_ecg.py --lead-sets [--cv-epochs 10 --cv-fs 125 --preset tiny]   # 3.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / ".." / "shared" / "data" / "ecg" / "cinc2021-sample"
FS = 500.0


def model_cfgs():
    from apps.ecg.model import model_config

    return {
        "ECG-Mamba (CNN+BiMamba)": model_config("small"),
        "ResNet1d": {"arch": "resnet1d", "width": 22, "blocks": [1, 1, 1, 1], "kernel_size": 9, "dropout": 0.1},
        "Transformer": model_config("small", arch="transformer", d_model=80, ff_mult=3, n_layer=4, n_head=4),
    }


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(spec: dict) -> dict:
    """One throughput/memory measurement in a fresh process."""
    import torch

    from apps.ecg.model import build_model, count_parameters

    torch.manual_seed(0)
    model = build_model(spec["cfg"], 12, 26)
    n, b, steps, mode = spec["samples"], spec["batch"], spec["steps"], spec["mode"]
    x = torch.randn(b, 12, n)
    y = (torch.rand(b, 26) < 0.1).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base = _rss_mb()

    def step():
        if mode == "train":
            model.train()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(x)

    step()  # warm-up (allocations, backend selection)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"params": count_parameters(model), "records_per_s": b * steps / dt, "seconds_per_step": dt / steps,
            "peak_mem_mb": max(0.0, peak - base), "threads": torch.get_num_threads()}


def throughput(quick: bool, timeout: int) -> list:
    rows = []
    lengths = [("10 s", int(10 * FS), 8, 2 if not quick else 1), ("5 min", int(300 * FS), 1, 1)]
    for name, cfg in model_cfgs().items():
        for label, n, batch, steps in lengths:
            for mode in ("train", "infer"):
                spec = {"cfg": cfg, "samples": n, "batch": batch, "steps": steps, "mode": mode}
                t0 = time.time()
                try:
                    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                       text=True, timeout=timeout)
                    res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {
                        "error": (p.stderr.strip().splitlines() or ["failed"])[-1][:120]}
                except subprocess.TimeoutExpired:
                    res = {"error": f"timeout > {timeout} s"}
                res.update(model=name, length=label, batch=batch, mode=mode)
                rows.append(res)
                print(f"  {name:<26}{label:>6} {mode:<6}"
                      + (f"{res['records_per_s']:9.2f} rec/s  peak +{res['peak_mem_mb']:.0f} MiB"
                         if "error" not in res else f"  {res['error']}") + f"  ({time.time() - t0:.0f} s)",
                      flush=True)
    return rows


def cross_validate(epochs: int, fs: float, folds: int = 5, seed: int = 0) -> dict:
    """5-fold CV on the sample records with a plain training loop (same loss/optimiser as train.py)."""
    import numpy as np
    import torch

    from apps.ecg.data import LEADS_12, WindowDataset, find_records, load_records
    from apps.ecg.infer import predict_signals
    from apps.ecg.labels import LabelSpace
    from apps.ecg.metrics import auroc_auprc_per_class
    from apps.ecg.train import ECGModule

    space = LabelSpace.scored()
    data, _ = load_records(find_records([DATA]), LEADS_12, fs, space)
    n = len(data.ids)
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(np.arange(n) % folds)
    window = int(10 * fs)
    out = {}
    for name, cfg in model_cfgs().items():
        oof = np.zeros((n, len(space)))
        fold_auc = []
        t0 = time.time()
        for k in range(folds):
            torch.manual_seed(seed + k)
            tr, te = np.nonzero(fold_of != k)[0], np.nonzero(fold_of == k)[0]
            module = ECGModule(space.classes, LEADS_12, fs=fs, window_s=10.0, model=cfg)
            ds = WindowDataset([data.signals[i] for i in tr], data.labels[tr], window, train=True, seed=seed + k)
            dl = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed + k))
            opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-2)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(dl))
            module.train()
            for _ in range(epochs):
                for x, y in dl:
                    loss = module.loss_fn(module(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
            probs, _ = predict_signals(module, [data.signals[i] for i in te])
            oof[te] = probs
            auroc, _ = auroc_auprc_per_class(data.labels[te], probs)
            fold_auc.append(float(np.nanmean(auroc)) if np.isfinite(auroc).any() else float("nan"))
        pooled, _ = auroc_auprc_per_class(data.labels, oof)
        out[name] = {"fold_macro_auroc": fold_auc, "mean": float(np.nanmean(fold_auc)),
                     "std": float(np.nanstd(fold_auc)), "pooled_oof_macro_auroc": float(np.nanmean(pooled)),
                     "classes_scored_pooled": int(np.isfinite(pooled).sum()), "seconds": time.time() - t0}
        print(f"  {name:<26} folds {', '.join(f'{a:.3f}' for a in fold_auc)}  mean {out[name]['mean']:.3f} "
              f"± {out[name]['std']:.3f}  pooled OOF {out[name]['pooled_oof_macro_auroc']:.3f} "
              f"({out[name]['seconds']:.0f} s)", flush=True)
    return out


def cross_validate_lead_sets(epochs: int, fs: float, preset: str = "tiny", folds: int = 5, seed: int = 0) -> dict:
    """5-fold CV, macro AUROC per Challenge lead set: ONE lead-masked model (random lead set per
    record and step, absent leads zero-filled + presence mask; apps.ecg's default) against FIVE
    models each trained on one lead set. Same epochs, batch, optimiser and folds for every model."""
    import numpy as np
    import torch

    from apps.ecg.data import LEAD_SETS, LEADS_12, WindowDataset, find_records, load_records
    from apps.ecg.infer import predict_signals
    from apps.ecg.labels import LabelSpace
    from apps.ecg.metrics import auroc_auprc_per_class
    from apps.ecg.model import model_config
    from apps.ecg.train import ECGModule, trained_lead_sets

    space = LabelSpace.scored()
    data, _ = load_records(find_records([DATA]), LEADS_12, fs, space)
    n = len(data.ids)
    fold_of = np.random.default_rng(seed).permutation(np.arange(n) % folds)
    window = int(10 * fs)
    sets = {k: list(LEAD_SETS[k]) for k in (12, 6, 4, 3, 2)}
    rows = {k: [LEADS_12.index(lead) for lead in v] for k, v in sets.items()}

    def fit(module, signals, labels, k, masked):
        ds = WindowDataset(signals, labels, window, train=True, seed=seed + k)
        dl = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed + k))
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(dl))
        module.train()
        for _ in range(epochs):
            for x, y in dl:
                if masked:  # what ECGModule.training_step does
                    pick = torch.randint(len(module.lead_sets), (len(x),))
                    x = x * module.set_keep[pick][:, :, None]
                loss = module.loss_fn(module(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return module.eval()

    oof = {arm: {s: np.zeros((n, len(space))) for s in sets} for arm in ("masked", "per_set")}
    fold_auc = {arm: {s: [] for s in sets} for arm in ("masked", "per_set")}
    t0 = time.time()
    for k in range(folds):
        tr, te = np.nonzero(fold_of != k)[0], np.nonzero(fold_of == k)[0]
        torch.manual_seed(seed + k)
        one = fit(ECGModule(space.classes, LEADS_12, fs=fs, window_s=10.0, model=model_config(preset),
                            lead_sets=trained_lead_sets(LEADS_12, True)),
                  [data.signals[i] for i in tr], data.labels[tr], k, True)
        for s, lead_rows in rows.items():
            keep = np.zeros((12, 1), np.float32)
            keep[lead_rows] = 1
            p_one, _ = predict_signals(one, [data.signals[i] * keep for i in te])
            torch.manual_seed(seed + k)
            own = fit(ECGModule(space.classes, sets[s], fs=fs, window_s=10.0, model=model_config(preset)),
                      [data.signals[i][lead_rows] for i in tr], data.labels[tr], k, False)
            p_own, _ = predict_signals(own, [data.signals[i][lead_rows] for i in te])
            for arm, p in (("masked", p_one), ("per_set", p_own)):
                oof[arm][s][te] = p
                auc, _ = auroc_auprc_per_class(data.labels[te], p)
                fold_auc[arm][s].append(float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"))
        print(f"  fold {k}: " + "  ".join(f"{s}: one {fold_auc['masked'][s][-1]:.3f} / own {fold_auc['per_set'][s][-1]:.3f}"
                                         for s in sets) + f"  ({time.time() - t0:.0f} s)", flush=True)
    out = {"epochs": epochs, "fs": fs, "preset": preset, "seconds": round(time.time() - t0), "sets": {}}
    for s in sets:
        row = {}
        for arm in ("masked", "per_set"):
            pooled, _ = auroc_auprc_per_class(data.labels, oof[arm][s])
            row[arm] = {"fold_macro_auroc": fold_auc[arm][s], "mean": float(np.nanmean(fold_auc[arm][s])),
                        "std": float(np.nanstd(fold_auc[arm][s])), "pooled_oof": float(np.nanmean(pooled))}
        out["sets"][s] = row
        print(f"  {s:>2} leads: one lead-masked model {row['masked']['mean']:.3f} ± {row['masked']['std']:.3f} "
              f"(pooled {row['masked']['pooled_oof']:.3f}) | own model {row['per_set']['mean']:.3f} ± "
              f"{row['per_set']['std']:.3f} (pooled {row['per_set']['pooled_oof']:.3f})", flush=True)
    return out


def markdown(rows: list, cv: dict, args) -> str:
    import torch

    lines = ["| model | params | length | batch | train rec/s | train peak MiB | infer rec/s | infer peak MiB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    key = {(r["model"], r["length"], r["mode"]): r for r in rows}
    for name in model_cfgs():
        for length in ("10 s", "5 min"):
            tr, inf = key.get((name, length, "train"), {}), key.get((name, length, "infer"), {})
            params = tr.get("params") or inf.get("params") or ""

            def v(r, k, fmt):
                return r["error"] if "error" in r else (fmt.format(r[k]) if k in r else "")

            lines.append(f"| {name} | {params:,} | {length} | {tr.get('batch', '')} | {v(tr, 'records_per_s', '{:.2f}')} | "
                         f"{v(tr, 'peak_mem_mb', '{:.0f}')} | {v(inf, 'records_per_s', '{:.2f}')} | "
                         f"{v(inf, 'peak_mem_mb', '{:.0f}')} |")
    if cv:
        lines += ["", f"5-fold CV on the 50 sample records ({args.cv_epochs} epochs per fold, {args.cv_fs:g} Hz, "
                  "batch 8, AdamW 1e-3, BCE):", "",
                  "| model | macro AUROC per fold | mean ± std | pooled out-of-fold macro AUROC (classes) |",
                  "|---|---|---|---|"]
        for name, r in cv.items():
            lines.append(f"| {name} | {', '.join(f'{a:.3f}' for a in r['fold_macro_auroc'])} | {r['mean']:.3f} ± "
                         f"{r['std']:.3f} | {r['pooled_oof_macro_auroc']:.3f} ({r['classes_scored_pooled']}) |")
    lines += ["", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads."]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="one timed step per setting, 2 CV epochs")
    p.add_argument("--cv-epochs", type=int, default=10)
    p.add_argument("--cv-fs", type=float, default=125.0)
    p.add_argument("--skip-cv", action="store_true")
    p.add_argument("--timeout", type=int, default=150, help="seconds per throughput measurement")
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument("--lead-sets", action="store_true",
                   help="only: 5-fold CV per lead set, one lead-masked model vs one model per lead set")
    p.add_argument("--preset", default="tiny", help="model preset for --lead-sets")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.lead_sets:
        res = cross_validate_lead_sets(args.cv_epochs, args.cv_fs, args.preset)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return
    if args.quick:
        args.cv_epochs = 2
    t0 = time.time()
    print("throughput and peak memory (12 leads, 500 Hz):", flush=True)
    rows = throughput(args.quick, args.timeout)
    cv = {}
    if not args.skip_cv:
        if not (DATA / "E07500.hea").is_file():
            print(f"skipping cross-validation: {DATA} not found")
        else:
            print("5-fold cross-validation on the sample records:", flush=True)
            cv = cross_validate(args.cv_epochs, args.cv_fs)
    md = markdown(rows, cv, args)
    print("\n" + md + f"\n\ntotal {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"throughput": rows, "cv": cv}, indent=2))


if __name__ == "__main__":
    main()
