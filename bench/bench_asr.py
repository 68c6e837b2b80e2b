"""ASR benchmark: Samba-ASR against the Conformer/Transformer baseline, and what streaming buys.

    nice python bench/bench_asr.py speed     [--sizes 10 60 600] [--preset small]   # encoder fwd/bwd time + peak RSS
    nice python bench/bench_asr.py rtf       [--preset small]                        # transcription RTF, 1 thread
    nice python bench/bench_asr.py stream    [--preset small]                        # latency per 640 ms chunk
    nice python bench/bench_asr.py longform  [--minutes 6 60]                        # peak RSS of streamed files
    nice python bench/bench_asr.py overfit   [--max-steps 300]                       # 34 LJSpeech utts -> WER on them
    nice python bench/bench_asr.py generalise [--n-train 2000] [--minutes 30]         # eSpeak corpus, unseen voice (CPU min)

Every timing/memory case runs in its own process (peak RSS = ru_maxrss of that process minus the
RSS after the model is built), with torch on one thread. The machine is shared: compare only the
rows of one run.
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
sys.path.insert(0, str(ROOT))
SPEECH = ROOT / ".." / "shared" / "data" / "speech"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: list) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SSM_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ speed
def case_speed(arch: str, preset: str, seconds: float, backward: bool) -> dict:
    import torch

    from apps.asr.model import ASRNet, model_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = model_config(preset if arch == "samba" else f"conformer-{preset}")
    net = ASRNet(258, 80, **cfg)
    T = int(seconds * 100) + 1
    feats = torch.randn(1, T, 80)
    lens = torch.tensor([T])
    base = _rss_mb()
    times = []
    for _ in range(2 if seconds <= 60 else 1):
        t0 = time.perf_counter()
        if backward:
            enc, _ = net.encode(feats, lens)
            enc.pow(2).mean().backward()
        else:
            with torch.no_grad():
                net.encode(feats, lens)
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "peak_mb": round(_peak_mb() - base, 1),
            "params_m": round(sum(p.numel() for p in net.encoder.parameters()) / 1e6, 2)}


def bench_speed(a) -> None:
    print(f"| encoder ({a.preset}) | audio | fwd s | fwd peak MB | fwd+bwd s | fwd+bwd peak MB |")
    print("|---|---|---|---|---|---|")
    for arch in ("samba", "conformer"):
        for s in a.sizes:
            if arch == "conformer" and s > a.max_attention:
                heads = 4
                gb = heads * (s * 25) ** 2 * 4 / 1e9
                print(f"| {arch} | {s:g} s | not run | > {gb:.1f} GB (one layer's attention weights alone) | "
                      f"not run | - |", flush=True)
                continue
            f = _child(["_speed", arch, a.preset, str(s), "0"])
            b = _child(["_speed", arch, a.preset, str(s), "1"]) if s <= a.max_backward else {"error": "skipped"}
            cell = lambda r, k: r.get(k, r.get("error", "?")) if "error" not in r else r["error"]
            fs = f"{f['seconds']:.2f}" if "seconds" in f else f.get("error")
            bs = f"{b['seconds']:.2f}" if "seconds" in b else b.get("error")
            print(f"| {arch} ({f.get('params_m', '?')} M) | {s:g} s | {fs} | {cell(f, 'peak_mb')} | {bs} | "
                  f"{cell(b, 'peak_mb')} |", flush=True)


# -------------------------------------------------------------------------------------------- rtf
def _untrained_module(preset: str, causal: bool):
    """A module with a real tokenizer and random weights (speed does not depend on training)."""
    from apps.asr.model import model_config
    from apps.asr.tokenizer import train_tokenizer
    from apps.asr.train import ASRModule

    import csv

    texts = [r["transcript"].upper() for r in csv.DictReader(open(SPEECH / "transcripts.tsv"), delimiter="\t")]
    tok = train_tokenizer(texts * 5, 256)
    kw = {"causal": True} if causal else {}
    m = ASRModule(tok.vocab_size, model_config(preset, **kw)).eval()
    m.tokenizer = tok
    return m


def case_rtf(preset: str, decode: str) -> dict:
    import torch

    from apps.asr.data import read_audio
    from apps.asr.infer import recognize

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = _untrained_module(preset, False)
    wav = read_audio(SPEECH / "ljspeech_coqui" / "wavs" / "LJ001-0001.wav")
    recognize(m, wav[:16000], decode="greedy")
    r = recognize(m, wav, decode=decode, beam=10)
    return {"rtf": r["rtf"], "duration": r["duration"]}


def bench_rtf(a) -> None:
    print(f"| model ({a.preset}, random weights) | decode | audio s | RTF (1 thread) |")
    print("|---|---|---|---|")
    for decode in ("greedy", "beam"):
        r = _child(["_rtf", a.preset, decode])
        print(f"| samba | {decode} | {r.get('duration')} | {r.get('rtf', r.get('error'))} |", flush=True)


# ----------------------------------------------------------------------------------------- stream
def case_stream(preset: str) -> dict:
    import numpy as np
    import torch

    from apps.asr.data import read_audio
    from apps.asr.infer import Streamer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = _untrained_module(preset, True)
    wav = read_audio(SPEECH / "ljspeech_coqui" / "wavs" / "LJ001-0001.wav")
    wav = np.concatenate([wav] * 3)
    s = Streamer(m)
    chunk = 10240
    lat = []
    for i in range(0, len(wav) - chunk + 1, chunk):
        t0 = time.perf_counter()
        s.accept(wav[i:i + chunk])
        lat.append(time.perf_counter() - t0)
    lat = np.array(lat[1:]) * 1000
    return {"chunks": len(lat), "mean_ms": round(float(lat.mean()), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "max_ms": round(float(lat.max()), 1)}


def bench_stream(a) -> None:
    r = _child(["_stream", a.preset])
    print(f"| causal Samba-ASR ({a.preset}), 640 ms chunks, 1 thread | chunks | mean ms | p95 ms | max ms |")
    print("|---|---|---|---|---|")
    print(f"| compute per chunk | {r.get('chunks')} | {r.get('mean_ms')} | {r.get('p95_ms')} | "
          f"{r.get('max_ms', r.get('error'))} |")


# --------------------------------------------------------------------------------------- longform
def _long_file(minutes: float) -> Path:
    import numpy as np
    import soundfile as sf

    from apps.asr.data import read_audio

    p = Path("/tmp") / f"asr_bench_{minutes:g}min.flac"
    if p.is_file():
        return p
    base = np.concatenate([read_audio(q) for q in sorted((SPEECH / "ljspeech_coqui" / "wavs").glob("*.wav"))])
    n = int(minutes * 60 * 16000)
    with sf.SoundFile(str(p), "w", 16000, 1, subtype="PCM_16") as f:
        done = 0
        while done < n:
            k = min(len(base), n - done)
            f.write(base[:k])
            done += k
    return p


def case_longform(preset: str, minutes: float) -> dict:
    import torch

    from apps.asr.infer import stream_file

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = _untrained_module(preset, True)
    p = _long_file(minutes)
    base = _rss_mb()
    t0 = time.perf_counter()
    r = stream_file(m, p)
    return {"minutes": minutes, "peak_mb": round(_peak_mb() - base, 1), "rtf": round((time.perf_counter() - t0)
                                                                                   / (minutes * 60), 4),
            "words": len(r["words"])}


def bench_longform(a) -> None:
    for mnt in a.minutes:
        _long_file(mnt)
    print(f"| causal Samba-ASR ({a.preset}) streamed from disk | audio | peak RSS growth MB | RTF (1 thread) |")
    print("|---|---|---|---|")
    for mnt in a.minutes:
        r = _child(["_longform", a.preset, str(mnt)])
        print(f"| transcribe | {mnt:g} min | {r.get('peak_mb', r.get('error'))} | {r.get('rtf')} |", flush=True)


# ------------------------------------------------------------------------------------ quality
def bench_overfit(a) -> None:
    """Train on the 34 LJSpeech utterances and score on the same utterances (does the whole path learn).

    Bounded by optimiser steps (not wall time) so a loaded machine does not change the result;
    augmentation (SpecAugment, speed perturbation) and dropout are off: the point is memorisation."""
    import csv
    import tempfile

    import torch

    from apps.asr.infer import evaluate_utterances
    from apps.asr.train import DEFAULTS, load_asr_module, prepare_utterances, train

    torch.set_num_threads(1)
    rows = [r for r in csv.DictReader(open(SPEECH / "transcripts.tsv"), delimiter="\t") if r["speaker"] == "LJ"]
    work = Path(a.out or tempfile.mkdtemp(prefix="asr_overfit_"))
    work.mkdir(parents=True, exist_ok=True)
    man = work / "lj.tsv"
    man.write_text("path\ttranscript\n" + "".join(f"{(SPEECH / r['path']).resolve()}\t{r['transcript']}\n"
                                                  for r in rows))
    cfg = {**DEFAULTS, "model": {"preset": a.preset, "dropout": 0.0}, "val_fraction": 0.0, "speed_perturb": [1.0],
           "specaug": None, "lr": a.lr, "warmup_steps": a.warmup, "batch_seconds": a.batch_seconds,
           "vocab_size": a.vocab_size}
    c0, t0 = time.process_time(), time.time()
    tk = {"max_steps": a.max_steps, "max_epochs": -1}
    if a.max_time:
        tk["max_time"] = a.max_time
    m = train([str(man)], work / "run", cfg, seed=a.seed, trainer_kwargs=tk, progress=False)
    cpu = time.process_time() - c0
    _loss_curve(work / "run")
    module = load_asr_module(work / "run")
    utts, _ = prepare_utterances([str(man)], None)
    print(f"| preset | training | decode | WER | CER |\n|---|---|---|---|---|")
    for decode in ("greedy", "beam"):
        met, _, _ = evaluate_utterances(module, utts, decode=decode, progress=False)
        print(f"| {a.preset} | {m['steps']} steps, {m['epochs'] + 1} epochs, {cpu:.0f} CPU s | {decode} | "
              f"WER {100 * met['wer']:.2f} % | CER {100 * met['cer']:.2f} % |", flush=True)
    print(f"(training {cpu:.0f} CPU s / {m['train_seconds']:.0f} s wall; total {time.time() - t0:.0f} s wall; "
          f"run folder {work / 'run'})")


def _loss_curve(run: Path, every: int = 5) -> None:
    """Print the epoch-mean training loss (every ``every``-th epoch) from the CSV log."""
    import csv

    f = run / "logs" / "metrics.csv"
    if not f.is_file():
        return
    rows = [r for r in csv.DictReader(open(f)) if r.get("train_loss_epoch")]
    pts = [f"{int(r['epoch'])}:{float(r['train_loss_epoch']):.1f}" for i, r in enumerate(rows)
           if i % every == 0 or i == len(rows) - 1]
    print("train loss by epoch: " + " ".join(pts), flush=True)


def _cpu_timer(minutes: float):
    """Lightning's Timer on this process's CPU time (``time.process_time``) instead of the wall
    clock: the budget (and the cosine schedule, which reads the Timer) do not depend on how loaded
    the shared machine is."""
    from lightning.pytorch.callbacks import Timer
    from lightning.pytorch.trainer.states import RunningStage

    class CpuTimer(Timer):
        def on_train_start(self, trainer, pl_module):
            self._start_time[RunningStage.TRAINING] = time.process_time()

        def on_train_end(self, trainer, pl_module):
            self._end_time[RunningStage.TRAINING] = time.process_time()

        def time_elapsed(self, stage=RunningStage.TRAINING):
            start, end = self._start_time[RunningStage(stage)], self._end_time[RunningStage(stage)]
            if start is None:
                return 0.0
            return (time.process_time() if end is None else end) - start

    return CpuTimer(duration={"seconds": int(minutes * 60)}, verbose=False)


def bench_generalise(a) -> None:
    """eSpeak corpus: train voices vs one held-out voice; Samba-ASR and the Conformer, same CPU budget."""
    import tempfile

    import torch

    from apps.asr.decode import DECODE_CTC_WEIGHT
    from apps.asr.infer import evaluate_utterances
    from apps.asr.synth import WORDS, make_corpus, random_sentences
    from apps.asr.train import DEFAULTS, load_asr_module, prepare_utterances, train

    torch.set_num_threads(1)
    work = Path(a.out or tempfile.mkdtemp(prefix="asr_gen_"))
    t0 = time.time()
    te = work / "test" / "manifest.tsv"
    if not a.eval_only:
        sents = random_sentences(a.n_train + a.n_test, 0, 3, 8, WORDS)
        tr = make_corpus(work / "train", sents[:a.n_train], ["m1", "f1", "m3", "f3", "m5"], seed=0)
        te = make_corpus(work / "test", sents[a.n_train:], ["f5"], seed=1, prefix="test")
        print(f"corpus: {a.n_train} train sentences (5 voices), {a.n_test} held-out sentences (unseen voice f5), "
              f"{time.time() - t0:.0f} s", flush=True)
    utts, _ = prepare_utterances([str(te)], None)
    rows = []
    for preset in (a.preset, f"conformer-{a.preset}"):
        if a.eval_only:   # re-score the run folders of an earlier run (same --out)
            m = json.loads((work / preset / "metrics.json").read_text())
            cpu = float("nan")
        else:
            cfg = {**DEFAULTS, "model": {"preset": preset}, "val_fraction": 0.0, "vocab_size": 128,
                   "batch_seconds": a.batch_seconds, "lr": a.lr}
            c0 = time.process_time()
            m = train([str(tr)], work / preset, cfg, seed=0, progress=False,
                      trainer_kwargs={"max_epochs": 100000, "callbacks": [_cpu_timer(a.minutes)]})
            cpu = time.process_time() - c0
        _loss_curve(work / preset, every=max(1, m["epochs"] // 8))
        module = load_asr_module(work / preset)
        for decode, w in (("greedy", None), ("beam", DECODE_CTC_WEIGHT), ("beam", 0.3)):
            kw = {} if w is None else {"ctc_weight": w}
            met, _, _ = evaluate_utterances(module, utts, decode=decode, progress=False, **kw)
            name = decode if w is None else f"joint beam 10, CTC weight {w}"
            rows.append(f"| {preset} | {m['n_params'] / 1e6:.2f} M | {m['steps']} steps, {m['epochs'] + 1} epochs, "
                        f"{cpu:.0f} CPU s | {name} | WER {100 * met['wer']:.2f} % | CER {100 * met['cer']:.2f} % |")
            print(rows[-1], flush=True)
    print("\n| model | params | training | decode | held-out WER | CER |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"(total {time.time() - t0:.0f} s wall; work folder {work})")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):   # a measurement in its own process
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "_speed":
            r = case_speed(rest[0], rest[1], float(rest[2]), rest[3] == "1")
        elif kind == "_rtf":
            r = case_rtf(rest[0], rest[1])
        elif kind == "_stream":
            r = case_stream(rest[0])
        else:
            r = case_longform(rest[0], float(rest[1]))
        print(json.dumps(r))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--sizes", type=float, nargs="+", default=[10, 60, 600])
    s.add_argument("--max-backward", type=float, default=600)
    s.add_argument("--max-attention", type=float, default=120,
                   help="longest audio (s) given to the Conformer (its attention grows with the square)")
    s.add_argument("--preset", default="small")
    for name in ("rtf", "stream"):
        sub.add_parser(name).add_argument("--preset", default="small")
    lf = sub.add_parser("longform")
    lf.add_argument("--minutes", type=float, nargs="+", default=[6, 60])
    lf.add_argument("--preset", default="small")
    o = sub.add_parser("overfit")
    o.add_argument("--preset", default="tiny")
    o.add_argument("--max-steps", type=int, default=300)
    o.add_argument("--max-time", default=None, help="optional wall-clock cap (DD:HH:MM:SS)")
    o.add_argument("--lr", type=float, default=3e-3)
    o.add_argument("--warmup", type=int, default=20)
    o.add_argument("--batch-seconds", type=float, default=60.0)
    o.add_argument("--vocab-size", type=int, default=64)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--out", default=None)
    g = sub.add_parser("generalise")
    g.add_argument("--preset", default="tiny")
    g.add_argument("--n-train", type=int, default=2000)
    g.add_argument("--n-test", type=int, default=100)
    g.add_argument("--minutes", type=float, default=30, help="CPU minutes of training per model")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--batch-seconds", type=float, default=120.0)
    g.add_argument("--eval-only", action="store_true", help="re-score the models an earlier run left in --out")
    g.add_argument("--out", default=None)
    a = p.parse_args()
    {"speed": bench_speed, "rtf": bench_rtf, "stream": bench_stream, "longform": bench_longform,
     "overfit": bench_overfit, "generalise": bench_generalise}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
