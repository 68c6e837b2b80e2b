"""int8 / bf16 in/out projections for CPU inference (core.layers.quant): speed and accuracy change.

    OMP_NUM_THREADS=1 python bench/bench_quant.py layer                     # one Mamba layer, random weights
    OMP_NUM_THREADS=1 python bench/bench_quant.py ecg --run DEMO/ecg/run --data DEMO/ecg/data/train DEMO/ecg/data/new
    OMP_NUM_THREADS=1 python bench/bench_quant.py medseg --run DEMO/medseg/run --data DEMO/medseg/data

Every row of a table is measured in the same process on the same inputs; CPU seconds
(``time.process_time``), one thread. The float32 row is the reference.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("fp32", "int8", "int8 in_proj", "bf16")


def _variant(model, mode):
    from core.layers.quant import quantize_projections

    m = copy.deepcopy(model).eval()
    if mode == "fp32":
        return m, 0
    kind, *only = mode.split()
    return m, quantize_projections(m, kind, tuple(only) or ("in_proj", "out_proj"))


def _cpu(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    t0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t0) / repeat


def case_layer(args) -> None:
    from core.layers import Mamba

    torch.manual_seed(0)
    layer = Mamba(args.d_model).eval()
    x = torch.randn(args.batch, args.length, args.d_model)
    with torch.no_grad():
        ref = layer(x)
        print(f"| Mamba d_model {args.d_model}, batch {args.batch} x L {args.length} | CPU ms / forward | speed-up | "
              "relative error |\n|---|---|---|---|")
        base = None
        for mode in MODES:
            m, _ = _variant(layer, mode)
            t = _cpu(lambda: m(x))
            base = base or t
            err = float((m(x) - ref).norm() / ref.norm())
            print(f"| {mode} | {1e3 * t:.1f} | {base / t:.2f}x | {err:.4f} |")


def case_ecg(args) -> None:
    from apps.ecg.data import find_records
    from apps.ecg.infer import evaluate_records, load_checkpoint

    module = load_checkpoint(args.run).eval()
    records = find_records(args.data)
    with torch.no_grad():
        evaluate_records(module, records[:4], show_progress=False)  # warm-up: first-call costs out of the table
    print(f"| ECG demo model ({len(records)} records) | projections | macro AUROC | Challenge score | CPU s |\n"
          "|---|---|---|---|---|")
    for mode in MODES:
        m, n = _variant(module, mode)
        t0 = time.process_time()
        with torch.no_grad():
            met, _, bad = evaluate_records(m, records, show_progress=False)
        t = time.process_time() - t0
        print(f"| {mode} | {n} | {met['macro_auroc']:.4f} | {met['challenge_score']:.4f} | {t:.1f} |")


def case_medseg(args) -> None:
    import tempfile

    import nibabel as nib
    import numpy as np

    from apps.medseg.evaluate import dice_hd95
    from apps.medseg.infer import load_segmenter, predict_file_cases

    module = load_segmenter(args.run)
    cfg = module.hparams.cfg if "cfg" in module.hparams else module.hparams["config"]
    d = cfg["data"]
    k = int(d["num_classes"])
    data = Path(args.data)
    print("| medseg demo model | projections | Dice per class | CPU s |\n|---|---|---|---|")
    for mode in MODES:
        m, n = _variant(module, mode)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.process_time()
            with torch.no_grad():
                written, fails = predict_file_cases(m.net, [data / "imagesTs"], tmp, d, d["patch_size"],
                                                    int(module.hparams.get("in_channels", 1)), sw_batch_size=4,
                                                    overwrite=True, log=lambda *_: None)
            t = time.process_time() - t0
            dice = []
            for p in written:
                pred = np.asarray(nib.load(str(p)).dataobj)
                truth_img = nib.load(str(data / "labelsTs" / p.name))
                dice.append(dice_hd95(pred, np.asarray(truth_img.dataobj), k, truth_img.header.get_zooms())["dice"])
        per_class = np.mean(np.array(dice), 0)
        print(f"| {mode} | {n} | {' / '.join(f'{v:.3f}' for v in per_class)} | {t:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="case", required=True)
    la = sub.add_parser("layer")
    la.add_argument("--d-model", type=int, default=128)
    la.add_argument("--batch", type=int, default=4)
    la.add_argument("--length", type=int, default=2048)
    for name in ("ecg", "medseg"):
        p = sub.add_parser(name)
        p.add_argument("--run", required=True)
        p.add_argument("--data", required=True, nargs="+" if name == "ecg" else None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"layer": case_layer, "ecg": case_ecg, "medseg": case_medseg}[args.case](args)


if __name__ == "__main__":
    main()
