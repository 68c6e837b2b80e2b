"""Run every app's self-contained demo (no downloads): ``python -m apps.demo --out demo_out``.

Each app makes its own synthetic data, trains a tiny model on the CPU,
evaluates it and writes predictions under ``OUT/<app>/``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

APPS = ("timeseries", "ecg", "medseg", "recsys", "asr", "graph")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m apps.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="output folder (one sub-folder per app)")
    p.add_argument("--apps", nargs="+", default=list(APPS), choices=APPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    failed = []
    for app in args.apps:
        out = Path(args.out) / app
        cmd = [sys.executable, "-m", f"apps.{app}.cli", "demo", "--out", str(out), "--seed", str(args.seed)]
        if args.overwrite:
            cmd.append("--overwrite")
        print(f"\n=== {app}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd)
        print(f"=== {app}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(app)
    if failed:
        print(f"demo failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nall demos done; outputs under {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
