"""apps/medseg benchmarks (CPU). Run from the repo root:

    python bench/bench_medseg.py speed   [--out DIR]   # step/inference time + peak memory vs MONAI nets
    python bench/bench_medseg.py brain   --work DIR [--minutes 20]   # Colin27 brain extraction, proxy test
    python bench/bench_medseg.py pretrain-gain --work DIR            # MambaMIM vs scratch, equal fine-tune steps

Real data: ../shared/data/medseg/colin27 (read in place, never copied). Derived files (brain mask,
proxy volumes, runs) go under --work.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLIN = ROOT / ".." / "shared" / "data" / "medseg" / "colin27"
sys.path.insert(0, str(ROOT))


def _run(cmd, log=None):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    t0 = time.time()
    # On a CPU shared with other jobs, two spinning OpenMP threads per process were 8x slower than one.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rc = subprocess.call(list(map(str, cmd)), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT if log else None,
                         env=env)
    if rc:
        raise SystemExit(f"command failed ({rc}): {' '.join(map(str, cmd))}")
    return time.time() - t0


# ----------------------------------------------------------------------------- brain extraction

BRAIN_CONFIG = {
    # 4 mm: a 48^3 patch (192 mm, padded) holds the whole head, so every step sees the skull and
    # face around the brain (32^3 patches at 3 mm labelled face and neck as brain on the proxies);
    # a perfect 4 mm mask mapped back to 1 mm still scores Dice 0.98
    "data": {"spacing": [4.0, 4.0, 4.0], "norm": "percentile", "patch_size": [48, 48, 48],
             "samples_per_volume": 2, "pos": 1, "neg": 1, "aug": "strong", "flip_axes": [0],
             "rotate_deg": 20.0, "num_classes": 2},
    "model": {"preset": "tiny"},
    "train": {"batch_size": 2, "steps_per_epoch": 25, "val_every": 4, "sw_batch_size": 2, "lr": 3e-3,
              "lr_schedule": "poly"},
}


def prepare_brain(work: Path) -> tuple:
    import nibabel as nib
    import numpy as np

    from medseg_proxy import TEST_PROXIES, VAL_PROXY, make_proxy

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    img = nib.load(str(COLIN / "ch2.nii.gz"))
    bet = nib.load(str(COLIN / "ch2bet.nii.gz"))
    mask = nib.Nifti1Image((np.asarray(bet.dataobj) > 0).astype(np.uint8), bet.affine, header=bet.header)
    mask.header.set_data_dtype(np.uint8)
    nib.save(mask, str(data / "colin27_brainmask.nii.gz"))
    entries = {}
    for p in TEST_PROXIES + (VAL_PROXY,):
        a, b = make_proxy(img, mask, p)
        nib.save(a, str(data / f"{p.name}_0000.nii.gz"))
        nib.save(b, str(data / f"{p.name}_mask.nii.gz"))
        entries[p.name] = {"image": str(data / f"{p.name}_0000.nii.gz"), "label": str(data / f"{p.name}_mask.nii.gz")}
    train = {"labels": {"0": "background", "1": "brain"},
             "training": [{"image": str((COLIN / "ch2.nii.gz").resolve()), "label": str(data / "colin27_brainmask.nii.gz")}],
             "validation": [entries[VAL_PROXY.name]]}
    test = {"labels": {"0": "background", "1": "brain"}, "training": [entries[p.name] for p in TEST_PROXIES]}
    (work / "train.json").write_text(json.dumps(train, indent=1))
    (work / "test.json").write_text(json.dumps(test, indent=1))
    (work / "brain.json").write_text(json.dumps(BRAIN_CONFIG, indent=1))
    return work / "train.json", work / "test.json", work / "brain.json"


def bench_brain(args) -> None:
    from core.engine import best_or_last_checkpoint

    work = Path(args.work)
    train_json, test_json, cfg = prepare_brain(work)
    run = work / "run"
    mins = int(args.minutes)
    cmd = ["nice", "-n", "10", sys.executable, "-m", "apps.medseg.cli", "train", "--data", train_json,
           "--out", run] + ([] if args.auto else ["--config", cfg]) + [
           "--max-time", f"00:00:{mins:02d}:00", "--seed", "0", "--overwrite", "--accelerator", "cpu"]
    with open(work / "train.log", "w") as log:
        t_train = _run(cmd, log)
    ckpt = best_or_last_checkpoint(run)  # last.ckpt when no validation ran yet
    ev = ["nice", "-n", "10", sys.executable, "-m", "apps.medseg.cli", "evaluate", "--checkpoint", ckpt,
          "--data", test_json, "--out", work / "eval" / "evaluation.json", "--overwrite"]
    with open(work / "eval.log", "w") as log:
        t_eval = _run(ev, log)
    res = json.loads((work / "eval" / "evaluation.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    summary = {"train_command": " ".join(map(str, cmd)), "eval_command": " ".join(map(str, ev)),
               "train_wall_s": round(t_train, 1), "eval_wall_s": round(t_eval, 1), "train": metrics,
               "cases": res["cases"], "mean_dice": res["mean_dice"]}
    if (run / "plans.json").is_file():  # no --config: the plan train made
        summary["plan"] = json.loads((run / "plans.json").read_text())["config"]
    (work / "brain_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


# ----------------------------------------------------------------------------- speed / memory

def _measure_one(name: str, steps: int, patch: int, vol: int) -> dict:
    """Run in a fresh process: params, train-step time, 128^3 sliding-window time, peak RSS."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = build_net(name, patch)
    params = sum(p.numel() for p in net.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(2, 1, patch, patch, patch)
    y = (torch.rand(2, 1, patch, patch, patch) > 0.5).float()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    net.train()
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    net.eval()
    v = torch.randn(1, 1, vol, vol, vol)
    with torch.no_grad():
        t0 = time.perf_counter()
        sliding_window_inference(v, [patch] * 3, 2, net, overlap=0.25, mode="gaussian")
        t_inf = time.perf_counter() - t0
    rss_inf = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times.sort()
    return {"model": name, "params_M": round(params / 1e6, 3), "train_step_s_median": round(times[len(times) // 2], 3),
            "sw_infer_128_s": round(t_inf, 2), "peak_rss_train_MB": round(rss_train / 1024), "peak_rss_MB": round(rss_inf / 1024),
            "rss_before_MB": round(rss0 / 1024)}


def build_net(name: str, patch: int):
    from monai.networks.nets import SegResNet, SwinUNETR, UNETR

    from apps.medseg.model import build_model

    if name == "unet_mamba_tiny":
        return build_model({"preset": "tiny"}, 1, 2)
    if name == "unet_mamba_small":
        return build_model({"preset": "tiny", "widths": [16, 32, 64, 128]}, 1, 2)
    if name == "segresnet":
        return SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8)
    if name == "swinunetr":
        return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=3)
    if name == "unetr":
        return UNETR(in_channels=1, out_channels=2, img_size=(patch,) * 3, feature_size=8, hidden_size=96,
                     mlp_dim=384, num_heads=4)
    raise ValueError(name)


def bench_speed(args) -> None:
    names = ["unet_mamba_tiny", "unet_mamba_small", "segresnet", "swinunetr", "unetr"]
    rows = []
    for n in names:
        out = subprocess.run([sys.executable, __file__, "_one", n, str(args.steps), str(args.patch), str(args.vol)],
                             cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "speed.json").write_text(json.dumps(rows, indent=1))
    print(f"\n| model | params (M) | train step (s, batch 2x{args.patch}^3) | sliding-window {args.vol}^3 (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_M']} | {r['train_step_s_median']} | {r['sw_infer_128_s']} | {r['peak_rss_MB']} |")


# ----------------------------------------------------------------------------- pretraining gain

def unlabelled_proxies(img, n: int, out_dir: Path, seed: int = 100) -> list:
    """``n`` more "other scanner" versions of the T1 with random parameters, images only.

    They stand in for a hospital's unlabelled scans; the held-out test proxies' parameters are
    never drawn (their seeds and settings are fixed elsewhere)."""
    import nibabel as nib
    import numpy as np

    from medseg_proxy import ProxyParams, make_proxy

    rng = np.random.default_rng(seed)
    codes = [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("P", "I", "R"), ("A", "S", "L"), ("R", "S", "A")]
    paths = []
    for k in range(n):
        p = ProxyParams(spacing=tuple(np.round(rng.uniform(0.9, 2.0, 3), 2)), axcodes=codes[rng.integers(len(codes))],
                        rotation_deg=tuple(rng.uniform(-15, 15, 3)), shift_mm=tuple(rng.uniform(-8, 8, 3)),
                        scale=float(10 ** rng.uniform(-2, 1.3)), offset=float(rng.uniform(-300, 300)),
                        gamma=float(rng.uniform(0.6, 1.4)), bias=float(rng.uniform(0.1, 0.5)),
                        noise=float(rng.uniform(0.01, 0.04)), seed=seed + k, name=f"unl{k}")
        dst = out_dir / f"unl{k}_0000.nii.gz"
        if not dst.exists():
            a, _ = make_proxy(img, img, p)  # the "label" argument is ignored here
            nib.save(a, str(dst))
        paths.append(dst)
    return paths


def bench_pretrain_gain(args) -> None:
    """Unlabelled pool: Colin27, the validation proxy and random proxies (images only; the test
    proxies stay unseen). Labelled: Colin27 only. Both arms fine-tune for the same number of steps."""
    import nibabel as nib

    work = Path(args.work)
    train_json, test_json, _ = prepare_brain(work)
    cfg = json.loads(json.dumps(BRAIN_CONFIG))
    cfg["train"]["val_every"] = 2
    cfg_path = work / "gain.json"
    cfg_path.write_text(json.dumps(cfg))
    data = work / "data"
    unl = work / "unlabelled"
    unl.mkdir(exist_ok=True)
    for src in [COLIN / "ch2.nii.gz", data / "val_proxy_0000.nii.gz"]:
        dst = unl / (src.name.replace(".nii.gz", "").replace("_0000", "") + "_0000.nii.gz")
        if not dst.exists():
            os.symlink(src.resolve(), dst)
    unlabelled_proxies(nib.load(str(COLIN / "ch2.nii.gz")), args.unlabelled, unl)
    pre = work / "pre"
    py = [sys.executable, "-m", "apps.medseg.cli"]
    logs = {}
    if args.reuse_pretrain and (pre / "checkpoints" / "last.ckpt").is_file():
        logs["pretrain_reused"] = str(pre / "checkpoints" / "last.ckpt")
    else:
        t = _run(["nice", "-n", "10"] + py + ["pretrain", "--images", unl, "--out", pre, "--config", cfg_path,
                                              "--max-time", f"00:00:{args.pretrain_minutes:02d}:00", "--seed", "0",
                                              "--overwrite", "--save-recon", "1"], open(work / "pre.log", "w"))
        logs["pretrain_wall_s"] = round(t, 1)
    epochs = max(1, args.finetune_steps // cfg["train"]["steps_per_epoch"])
    prev = work / "gain_summary.json"
    results = json.loads(prev.read_text())["results"] if args.reuse_pretrain and prev.is_file() else {}
    results = {k: v for k, v in results.items() if not k.endswith("_mean")}
    arms = (("scratch", []), ("mambamim", ["--init-from", pre / "checkpoints" / "last.ckpt"]))
    for seed, (arm, extra) in ((s, a) for s in args.seeds for a in arms):
        name = arm if seed == 0 else f"{arm}_seed{seed}"
        out = work / name
        t = _run(["nice", "-n", "10"] + py + ["train", "--data", train_json, "--out", out, "--config", cfg_path,
                                              "--max-epochs", str(epochs), "--seed", str(seed), "--overwrite"] + extra,
                 open(work / f"{name}.log", "w"))
        _run(["nice", "-n", "10"] + py + ["evaluate", "--checkpoint", out / "checkpoints" / "best.ckpt",
                                          "--data", test_json, "--out", out / "eval" / "evaluation.json", "--overwrite"],
             open(work / f"{name}_eval.log", "w"))
        ev = json.loads((out / "eval" / "evaluation.json").read_text())
        m = json.loads((out / "metrics.json").read_text())
        results[name] = {"test_mean_dice": ev["mean_dice"], "best_val_dice": m["best_val_dice"], "steps": m["steps"],
                        "train_wall_s": round(t, 1), "per_case": {c["case"]: c["dice"][0] for c in ev["cases"]}}
    for arm, _ in arms:  # mean over the seeds run so far
        runs = [r for k, r in results.items() if k == arm or k.startswith(arm + "_seed")]
        results[f"{arm}_mean"] = {"seeds": len(runs), "test_mean_dice": sum(r["test_mean_dice"] for r in runs) / len(runs)}
    summary = {**logs, "pretrain_minutes": args.pretrain_minutes, "finetune_steps": epochs * cfg["train"]["steps_per_epoch"],
               "unlabelled_volumes": 2 + args.unlabelled, "results": results}
    (work / "gain_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        _, _, name, steps, patch, vol = sys.argv
        print(json.dumps(_measure_one(name, int(steps), int(patch), int(vol))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--patch", type=int, default=64)
    s.add_argument("--vol", type=int, default=128)
    s.add_argument("--out", default=None)
    s.set_defaults(fn=bench_speed)
    s = sub.add_parser("brain")
    s.add_argument("--work", required=True)
    s.add_argument("--minutes", type=int, default=20)
    s.add_argument("--auto", action="store_true", help="no config: train plans from the data (ssm-medseg plan)")
    s.set_defaults(fn=bench_brain)
    s = sub.add_parser("pretrain-gain")
    s.add_argument("--work", required=True)
    s.add_argument("--pretrain-minutes", type=int, default=8)
    s.add_argument("--finetune-steps", type=int, default=300, help="per arm (whole epochs of 25 steps)")
    s.add_argument("--unlabelled", type=int, default=6, help="random unlabelled proxies added to the pool")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds (both arms each)")
    s.add_argument("--reuse-pretrain", action="store_true",
                   help="keep WORK/pre's checkpoint and earlier arms' results; run only the given seeds")
    s.set_defaults(fn=bench_pretrain_gain)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
