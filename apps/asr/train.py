"""Training: the LightningModule (features, CMVN, tokenizer and config travel in the checkpoint),
the audio dataset with speed perturbation, and the ``train`` run from corpora to a run folder."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from core.engine import (UserError, atomic_write, best_or_last_checkpoint, budget_fraction, is_rank_zero, load_module,
                         make_trainer, seed_everything, write_json)

from .data import (BucketBatchSampler, Utterance, fill_durations, load_corpora, normalize_text, read_audio,
                   speed_perturb)
from .features import LogMel, compute_cmvn, spec_augment
from .model import ASRNet, count_parameters, model_config
from .tokenizer import Tokenizer, train_tokenizer

DEFAULTS: Dict = {
    "model": {"preset": "small"},      # preset (model.PRESETS) + overrides, e.g. {"causal": true}
    "n_mels": 80,
    "vocab_size": 256,                 # SentencePiece pieces (lowered automatically on tiny corpora)
    "tokenizer_type": "unigram",       # unigram | bpe | char
    "ctc_weight": 0.3,                 # joint CTC/attention loss (ESPnet)
    "lsm_weight": 0.1,                 # label smoothing of the decoder loss
    "specaug": {"num_freq_mask": 2, "freq_mask_width": 27, "num_time_mask": 10, "time_mask_ratio": 0.05},
    "speed_perturb": [0.9, 1.0, 1.1],  # [] or [1.0] turns it off
    "lr": 2e-3,
    "weight_decay": 1e-3,
    "warmup_steps": 500,               # linear warm-up (at most a tenth of the run), then cosine decay
    "grad_clip": 5.0,
    "batch_seconds": 200.0,            # audio seconds per batch (length-sorted buckets)
    "max_batch_size": 64,
    "val_fraction": 0.05,              # held out when no --valid data is given (0: no validation)
    "max_utt_seconds": 60.0,           # longer training utterances are skipped
    "cache_audio_hours": 1.0,          # decode all audio once into memory below this total
    "cmvn_max_utts": 1000,
    "max_epochs": 100,
    "num_workers": 0,
}


class ASRModule(L.LightningModule):
    """Samba-ASR (or the Conformer baseline) with its front end.

    ``forward(wav (B, n) at 16 kHz, wav_lens (B,)) -> (enc (B, T', d), enc_lens)``. The checkpoint
    holds the hyper-parameters, the global CMVN buffers and the SentencePiece model, so
    ``evaluate``/``transcribe``/``stream`` need only the checkpoint.
    """

    def __init__(self, vocab_size: int, model: dict, n_mels: int = 80, ctc_weight: float = 0.3,
                 lsm_weight: float = 0.1, specaug: Optional[dict] = None, lr: float = 2e-3,
                 weight_decay: float = 1e-3, warmup_steps: int = 500, steps_per_epoch: Optional[int] = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = ASRNet(vocab_size, n_mels, **model)
        self.logmel = LogMel(n_mels=n_mels)
        self.register_buffer("cmvn_mean", torch.zeros(n_mels))
        self.register_buffer("cmvn_std", torch.ones(n_mels))
        self.tokenizer: Optional[Tokenizer] = None

    # -- checkpoint extras ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["asr_tokenizer"] = self.tokenizer.proto if self.tokenizer is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        proto = checkpoint.get("asr_tokenizer")
        if not isinstance(proto, (bytes, bytearray)):
            raise ValueError("the checkpoint has no SentencePiece model (not an ssm-asr checkpoint)")
        self.tokenizer = Tokenizer(proto)

    @property
    def frame_seconds(self) -> float:
        """Seconds per encoder frame (10 ms hop x 4)."""
        return 4 * self.logmel.hop / self.logmel.sample_rate

    # -- front end -----------------------------------------------------------------------------
    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.cmvn_mean) / self.cmvn_std

    def features(self, wav: torch.Tensor, wav_lens: torch.Tensor):
        """(B, n) waveforms -> normalised log-mel (B, T, n_mels) (zero past each length), lengths (B,)."""
        feats = self.normalize(self.logmel(wav))
        lens = torch.div(wav_lens, self.logmel.hop, rounding_mode="floor") + 1
        mask = torch.arange(feats.shape[1], device=feats.device)[None] < lens.to(feats.device)[:, None]
        return feats * mask[..., None], lens

    def forward(self, wav: torch.Tensor, wav_lens: torch.Tensor):
        feats, lens = self.features(wav, wav_lens)
        return self.net.encode(feats, lens.to(feats.device))

    # -- loss ----------------------------------------------------------------------------------
    def loss(self, batch, train: bool):
        wav, wav_lens, ys, ys_lens = batch
        feats, lens = self.features(wav, wav_lens)
        if train and self.hparams.specaug:
            feats = spec_augment(feats, lens, **self.hparams.specaug)
        lens = lens.to(feats.device)
        enc, enc_lens = self.net.encode(feats, lens)
        logp = torch.log_softmax(self.net.ctc_logits(enc).float(), -1)
        B = wav.shape[0]
        ctc = F.ctc_loss(logp.transpose(0, 1), ys.clamp(min=0), enc_lens, ys_lens, blank=0, reduction="sum",
                         zero_infinity=True) / B
        sos = self.hparams.vocab_size - 1
        ys_in = torch.cat([torch.full((B, 1), sos, device=ys.device, dtype=ys.dtype), ys.clamp(min=0)], 1)
        ys_out = torch.cat([ys, torch.full((B, 1), -1, device=ys.device, dtype=ys.dtype)], 1)
        ys_out[torch.arange(B), ys_lens] = sos
        logits = self.net.decoder(enc, enc_lens, ys_in, ys_lens + 1).float()
        att = F.cross_entropy(logits.transpose(1, 2), ys_out, ignore_index=-1,
                              label_smoothing=self.hparams.lsm_weight, reduction="sum") / B
        w = self.hparams.ctc_weight
        valid = ys_out >= 0
        acc = ((logits.argmax(-1) == ys_out) & valid).sum() / valid.sum().clamp(min=1)
        return w * ctc + (1 - w) * att, ctc, att, acc, logp, enc_lens

    def training_step(self, batch, batch_idx):
        loss, ctc, att, acc, _, _ = self.loss(batch, train=True)
        bs = batch[0].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("train_ctc", ctc, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("train_acc", acc, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, ctc, att, acc, logp, enc_lens = self.loss(batch, train=False)
        bs = batch[0].shape[0]
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("val_acc", acc, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        from core.engine.optim import param_groups

        opt = torch.optim.AdamW(param_groups(self.net, hp.weight_decay), lr=hp.lr, betas=(0.9, 0.98))
        module = self

        def factor(step: int) -> float:
            trainer = getattr(module, "_trainer", None)
            frac = budget_fraction(trainer, hp.steps_per_epoch) if trainer is not None else 0.0
            # warm-up ends after warmup_steps or a tenth of the budget (steps, epochs or --max-time),
            # whichever comes first: a short time-bounded run must not spend itself warming up
            ramp = min(1.0, max((step + 1) / max(1, hp.warmup_steps), 10 * frac))
            return ramp * max(0.02, 0.5 * (1 + math.cos(math.pi * frac)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ----------------------------------------------------------------------------------------- data
class AudioDataset(torch.utils.data.Dataset):
    """Utterances -> (waveform float32 (n,), token ids (U,)); optional in-memory audio and speed
    perturbation (a factor drawn per item from ``speeds``)."""

    def __init__(self, utts: Sequence[Utterance], tokenizer: Tokenizer, speeds: Sequence[float] = (1.0,),
                 cache: bool = False):
        self.utts = list(utts)
        self.tok = tokenizer
        self.speeds = list(speeds) or [1.0]
        self.labels = [tokenizer.encode(u.text) for u in self.utts]
        self.cache = [self._read(i) for i in range(len(self.utts))] if cache else None

    def _read(self, i: int) -> np.ndarray:
        u = self.utts[i]
        return read_audio(u.path, u.start, u.end)

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int):
        wav = self.cache[i] if self.cache is not None else self._read(i)
        s = random.choice(self.speeds)
        return torch.from_numpy(np.ascontiguousarray(speed_perturb(wav, s))), torch.tensor(self.labels[i])


def collate(items):
    """[(wav, ys)] -> wav (B, n) zero-padded, wav_lens (B,), ys (B, U) padded with -1, ys_lens (B,)."""
    wavs, ys = zip(*items)
    wl = torch.tensor([w.shape[0] for w in wavs])
    yl = torch.tensor([y.shape[0] for y in ys])
    W = torch.zeros(len(wavs), int(wl.max()))
    Y = torch.full((len(ys), max(1, int(yl.max()))), -1, dtype=torch.long)
    for i, (w, y) in enumerate(zip(wavs, ys)):
        W[i, : w.shape[0]] = w
        Y[i, : y.shape[0]] = y
    return W, wl, Y, yl


def prepare_utterances(specs: Sequence[str | Path], max_seconds: Optional[float], log=print):
    """Load, normalise and size-check corpora; returns (utterances, failure lines)."""
    corpus = load_corpora(specs)
    utts, fails = fill_durations(corpus.utterances)
    fails = corpus.failures + fails
    ok = []
    for u in utts:
        u.text = normalize_text(u.text or "")
        if not u.text:
            fails.append(f"{u.path}: empty transcript after normalisation")
        elif max_seconds and u.duration > max_seconds:
            fails.append(f"{u.path}: {u.duration:.1f} s is longer than max_utt_seconds={max_seconds:g}")
        else:
            ok.append(u)
    return ok, fails


def resolve_config(cfg: Dict) -> Dict:
    """Fill the model config from its preset."""
    cfg = dict(cfg)
    m = dict(cfg.get("model") or {})
    preset = m.pop("preset", "small")
    try:
        cfg["model"] = model_config(preset, **m)
    except ValueError as e:
        raise UserError("config model", str(e)) from None
    cfg["model_preset"] = preset
    if not 0 <= float(cfg["val_fraction"]) < 1:
        raise UserError("config val_fraction", "must be in [0, 1)")
    return cfg


def train(data: Sequence[str | Path], out_dir: str | Path, cfg: Dict, seed: int = 0,
          trainer_kwargs: Optional[Dict] = None, valid: Optional[Sequence[str | Path]] = None,
          tokenizer: Optional[str | Path] = None, progress: bool = True, log=print) -> Dict:
    """Train on corpora ``data``; writes ``out_dir/checkpoints/{best,last}.ckpt``, ``metrics.json``,
    ``config.json``, ``tokenizer.model``, ``skipped.txt`` and logs. Returns the metrics dict."""
    from .infer import evaluate_utterances

    cfg = resolve_config(cfg)
    out = Path(out_dir)
    seed_everything(seed)
    t0 = time.time()
    utts, fails = prepare_utterances(data, cfg["max_utt_seconds"], log)
    val_utts: List[Utterance] = []
    if valid:
        val_utts, vf = prepare_utterances(valid, None, log)
        fails += vf
    for line in fails:
        log(f"skipped: {line}")
    rank0 = is_rank_zero()
    if fails and rank0:
        with atomic_write(out / "skipped.txt", overwrite=True) as f:  # the run folder is ours (prepare_run_dir)
            f.write("\n".join(fails) + "\n")
    if not utts:
        raise UserError(str(data[0]), "no usable training utterance (see the lines above)")
    if not valid and float(cfg["val_fraction"]) > 0 and len(utts) >= 4:
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(utts))
        n_val = max(1, min(500, int(round(len(utts) * float(cfg["val_fraction"])))))
        val_utts = [utts[i] for i in idx[:n_val]]
        utts = [utts[i] for i in sorted(idx[n_val:])]
    tok = Tokenizer.load(tokenizer) if tokenizer else train_tokenizer(
        [u.text for u in utts], int(cfg["vocab_size"]), cfg["tokenizer_type"], seed=seed)
    if rank0:
        tok.save(out / "tokenizer.model")
    hours = sum(u.duration for u in utts) / 3600
    cache = hours <= float(cfg["cache_audio_hours"])
    log(f"{len(utts)} training utterances ({hours:.2f} h), {len(val_utts)} validation, {len(fails)} skipped; "
        f"{tok.n_pieces} SentencePiece pieces; audio {'in memory' if cache else 'read on demand'} "
        f"({time.time() - t0:.1f} s)")
    ds_tr = AudioDataset(utts, tok, cfg["speed_perturb"] or [1.0], cache)
    ds_va = AudioDataset(val_utts, tok, [1.0], cache) if val_utts else None
    # global CMVN on (a sample of) the training set, without perturbation
    pick = np.random.default_rng(seed).permutation(len(utts))[: int(cfg["cmvn_max_utts"])]
    logmel = LogMel(n_mels=int(cfg["n_mels"]))
    with torch.no_grad():
        mean, std = compute_cmvn(logmel(torch.from_numpy(ds_tr.cache[i] if cache else ds_tr._read(i)))
                                 for i in pick)
    tk = dict(trainer_kwargs or {})
    import warnings

    warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    if tk.get("max_epochs") is None and tk.get("max_time") is None:
        tk["max_epochs"] = int(cfg["max_epochs"])
    trainer = make_trainer(out, monitor="val_loss" if ds_va else "train_loss_epoch", mode="min",
                           progress=progress, num_sanity_val_steps=0, use_distributed_sampler=False,
                           gradient_clip_val=float(cfg["grad_clip"]), **tk)
    sampler = BucketBatchSampler([u.duration for u in utts], float(cfg["batch_seconds"]),
                                 int(cfg["max_batch_size"]), True, seed, trainer.world_size, trainer.global_rank)
    nw = int(cfg["num_workers"])
    dl_tr = torch.utils.data.DataLoader(ds_tr, batch_sampler=sampler, collate_fn=collate, num_workers=nw)
    dl_va = None
    if ds_va:
        vs = BucketBatchSampler([u.duration for u in val_utts], float(cfg["batch_seconds"]),
                                int(cfg["max_batch_size"]), False, seed, trainer.world_size, trainer.global_rank)
        dl_va = torch.utils.data.DataLoader(ds_va, batch_sampler=vs, collate_fn=collate, num_workers=nw)
    module = ASRModule(tok.vocab_size, cfg["model"], int(cfg["n_mels"]), float(cfg["ctc_weight"]),
                       float(cfg["lsm_weight"]), cfg["specaug"], float(cfg["lr"]), float(cfg["weight_decay"]),
                       int(cfg["warmup_steps"]), len(sampler))
    module.cmvn_mean.copy_(mean)
    module.cmvn_std.copy_(std)
    module.tokenizer = tok
    n_params = count_parameters(module.net)
    log(f"model {cfg['model_preset']} ({cfg['model']['arch']}, "
        f"{'causal' if module.net.causal else 'offline'} encoder): {n_params:,} parameters")
    if rank0:
        write_json(out / "config.json", {**cfg, "seed": seed, "data": [str(d) for d in data],
                                         "valid": [str(v) for v in valid or []]})
    t1 = time.time()
    trainer.fit(module, dl_tr, dl_va)
    train_s = time.time() - t1
    ckpt = best_or_last_checkpoint(out)
    metrics = {"checkpoint": str(ckpt), "n_train": len(utts), "n_val": len(val_utts), "n_skipped": len(fails),
               "train_hours": round(hours, 4), "n_params": n_params, "epochs": int(trainer.current_epoch),
               "steps": int(trainer.global_step), "train_seconds": round(train_s, 1),
               "train_loss_last": _metric(trainer, "train_loss_epoch"), "val_loss_last": _metric(trainer, "val_loss")}
    if val_utts and trainer.is_global_zero:
        best = load_asr_module(ckpt)
        m, _, _ = evaluate_utterances(best, val_utts, decode="greedy", progress=False)
        metrics["validation"] = {k: m[k] for k in ("wer", "cer", "n_utterances")}
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
    return metrics


def load_asr_module(path: str | Path) -> ASRModule:
    """An ``ASRModule`` from a checkpoint file or a run folder (UserError if unusable)."""
    p = Path(path)
    if p.is_dir():
        p = best_or_last_checkpoint(p)
    return load_module(p, ASRModule)


def _metric(trainer, key: str) -> Optional[float]:
    v = trainer.callback_metrics.get(key)
    return None if v is None else float(v)
