"""Supervised training: Dice + cross-entropy on random patches, sliding-window validation, best checkpoint."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.engine import UserError, best_or_last_checkpoint, configure_optimizers, is_rank_zero, make_trainer, write_json
from core.engine.checkpoint import safe_load

from .config import lr_schedule
from .model import build_model, count_parameters


class RepeatDataset(Dataset):
    """``n`` draws per epoch from a small dataset whose items are random patches."""

    def __init__(self, ds: Dataset, n: int):
        self.ds, self.n = ds, max(int(n), 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.ds[i % len(self.ds)]


def seeded_loader(ds: Dataset, **kwargs) -> DataLoader:
    """A DataLoader whose MONAI random transforms follow ``--seed``.

    MONAI transforms draw from their own ``RandomState``, not numpy's global one, so seeding the
    process alone leaves the augmentations (and every metric) different from run to run. Their
    states are seeded here from torch's seeded generator (plus the DDP rank, so ranks differ), and
    in each worker process from the worker's seed."""
    from monai.data.utils import set_rnd, worker_init_fn

    from core.engine.cli import global_rank

    seed = int(torch.randint(0, 2 ** 31 - 1, ()).item()) + global_rank()
    set_rnd(ds, seed % 2 ** 32)
    return DataLoader(ds, worker_init_fn=worker_init_fn, **kwargs)


def infer_num_classes(ds: Mapping, cfg_classes: Optional[int]) -> int:
    """Number of classes incl. background: config, else dataset.json ``labels``, else max label + 1."""
    if cfg_classes:
        return int(cfg_classes)
    labels = ds.get("labels")
    if isinstance(labels, dict) and labels:
        vals = []
        for k, v in labels.items():  # MSD: {"0": "background"}; nnU-Net v2: {"background": 0}
            for cand in (k, v):
                try:
                    vals.append(int(cand))
                    break
                except (TypeError, ValueError):
                    continue
        if vals:
            return max(vals) + 1
    import nibabel as nib

    mx = 0
    for c in ds["training"]:
        mx = max(mx, int(np.asarray(nib.load(c["label"]).dataobj).max()))
    return max(mx + 1, 2)


def class_names(ds: Mapping, num_classes: int) -> List[str]:
    names = [f"class{i}" for i in range(num_classes)]
    labels = ds.get("labels")
    if isinstance(labels, dict):
        for k, v in labels.items():
            try:
                names[int(k)] = str(v)
            except (ValueError, IndexError, TypeError):
                try:
                    names[int(v)] = str(k)
                except (ValueError, IndexError, TypeError):
                    pass
    return names


class SegModule(L.LightningModule):
    """UNet-Mamba segmentation. The whole config travels in the checkpoint (``hparams``)."""

    def __init__(self, config: dict, in_channels: int, num_classes: int, class_names: Sequence[str] = ()):
        super().__init__()
        self.save_hyperparameters()
        from monai.losses import DiceCELoss
        from monai.metrics import DiceMetric

        self.config = config
        self.net = build_model(config["model"], in_channels, num_classes)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=False)
        self.names = list(class_names) or [f"class{i}" for i in range(num_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _):
        loss = self.loss(self.net(batch["image"]), batch["label"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch, _):
        from monai.inferers import sliding_window_inference
        from monai.networks.utils import one_hot

        t = self.config["train"]
        logits = sliding_window_inference(batch["image"], list(self.config["data"]["patch_size"]),
                                          t["sw_batch_size"], self.net, overlap=t["overlap"], mode="gaussian")
        k = self.hparams.num_classes
        pred = one_hot(logits.argmax(1, keepdim=True), k)
        self.dice(pred, one_hot(batch["label"].long(), k))

    def on_validation_epoch_end(self):
        per_class = self.dice.aggregate()
        self.dice.reset()
        per_class = torch.nan_to_num(torch.as_tensor(per_class).reshape(-1), nan=0.0)
        self.log("val_dice", per_class.mean(), prog_bar=True)
        for i, v in enumerate(per_class.tolist(), start=1):
            self.log(f"val_dice_{self.names[i] if i < len(self.names) else i}", v)

    def configure_optimizers(self):
        t = self.config["train"]
        if lr_schedule(t) == "constant":
            return configure_optimizers(self, lr=t["lr"], weight_decay=t["weight_decay"])
        return configure_optimizers(self, lr=t["lr"], weight_decay=t["weight_decay"], schedule="poly",
                                    steps_per_epoch=int(t["steps_per_epoch"]))


def load_pretrained_into(net: torch.nn.Module, ckpt_path: str | Path) -> Dict[str, int]:
    """Copy encoder/decoder weights of a MambaMIM checkpoint into ``net`` (heads excluded).

    Raises UserError when the file is not a pretraining checkpoint or the architectures differ.
    """
    p = Path(ckpt_path)
    if not p.is_file():
        raise UserError(p, "pretraining checkpoint not found")
    ck = safe_load(p)  # weights and plain config only; anything else is refused, never run
    sd = ck.get("state_dict") if isinstance(ck, dict) else None
    if not isinstance(sd, dict):
        raise UserError(p, "not a Lightning checkpoint (no state_dict)")
    pre = {k[len("mim.net."):]: v for k, v in sd.items() if k.startswith("mim.net.")}
    if not pre:
        raise UserError(p, "not an ssm-medseg pretraining checkpoint (no mim.net.* weights)")
    own = net.state_dict()
    take = {k: v for k, v in pre.items() if not k.startswith("head.") and k in own}
    bad = [k for k, v in take.items() if own[k].shape != v.shape]
    if bad:
        raise UserError(p, f"architecture differs from the model config (e.g. {bad[0]} "
                           f"{tuple(pre[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
    if len(take) < 0.5 * len(own):
        raise UserError(p, f"only {len(take)} of {len(own)} tensors match: different model preset?")
    net.load_state_dict(take, strict=False)
    return {"loaded": len(take), "total": len(own)}


@torch.no_grad()
def decide_postprocessing(module: "SegModule", val_dl) -> Dict:
    """nnU-Net's post-processing decision on the validation cases: per foreground class, keep only
    the largest connected component (MONAI ``KeepLargestConnectedComponent``) when that raises the
    class's mean validation Dice, and not otherwise. Returns ``{"keep_largest": [classes],
    "dice_before": [...], "dice_after": [...]}`` (per foreground class)."""
    from .infer import keep_largest_component, sliding_window_probs

    cfg = module.config
    k = int(module.hparams.num_classes)
    module.eval()
    before, after = [], []
    for batch in val_dl:
        for x, y in zip(batch["image"], batch["label"]):
            probs = sliding_window_probs(module.net, x, cfg["data"]["patch_size"], cfg["train"]["sw_batch_size"],
                                         cfg["train"]["overlap"])
            pred = probs.argmax(0).numpy().astype(np.uint8)
            truth = np.asarray(torch.as_tensor(y)[0]).astype(np.int64)
            before.append(class_dice(pred, truth, k))
            after.append([class_dice(keep_largest_component(pred, [c]), truth, k)[c - 1] for c in range(1, k)])
    if not before:
        return {"keep_largest": [], "dice_before": [], "dice_after": []}
    b, a = np.mean(before, 0), np.mean(after, 0)
    keep = [c for c in range(1, k) if a[c - 1] > b[c - 1]]
    return {"keep_largest": keep, "dice_before": b.round(5).tolist(), "dice_after": a.round(5).tolist()}


def class_dice(pred: np.ndarray, truth: np.ndarray, k: int) -> List[float]:
    """Per foreground class Dice of integer masks ``(X, Y, Z)`` (empty in both: 1)."""
    out = []
    for c in range(1, k):
        p, t = pred == c, truth == c
        den = int(p.sum()) + int(t.sum())
        out.append(1.0 if den == 0 else 2.0 * int((p & t).sum()) / den)
    return out


def store_postprocessing(ckpt_paths: Sequence[Path], decision: Mapping) -> None:
    """Write the decision into each checkpoint's config (``config["postprocessing"]``), atomically."""
    from core.engine import atomic_save

    for p in ckpt_paths:
        if not Path(p).is_file():
            continue
        ck = safe_load(p)  # our own checkpoint, still read without running code
        ck["hyper_parameters"]["config"]["postprocessing"] = dict(decision)
        atomic_save(ck, p, overwrite=True)


def make_loaders(train_cases, val_cases, cfg: Mapping, num_workers: int = 0):
    """Cached training patches (``steps_per_epoch`` batches per epoch) and whole validation volumes."""
    from monai.data import list_data_collate

    from .transforms import make_dataset

    d, t = cfg["data"], cfg["train"]
    per_item = int(d["samples_per_volume"])
    bs = max(1, int(t["batch_size"]) // per_item)
    train_ds = RepeatDataset(make_dataset(train_cases, d, train=True), int(t["steps_per_epoch"]) * bs)
    val_ds = make_dataset(val_cases, d, train=False)
    train_dl = seeded_loader(train_ds, batch_size=bs, shuffle=True, num_workers=num_workers,
                          collate_fn=list_data_collate, persistent_workers=num_workers > 0)
    val_dl = DataLoader(val_ds, batch_size=1, num_workers=0, collate_fn=list_data_collate)
    return train_dl, val_dl


def train_command(data: str | Path, out: str | Path, config=None, set_pairs: Sequence[str] = (),
                  trainer_kwargs: Optional[Mapping] = None, num_workers: int = 0, init_from: Optional[str] = None,
                  seed: int = 0, overwrite: bool = False, progress: bool = True,
                  plan: Optional[str] = None) -> Optional[dict]:
    """``ssm-medseg train``: config, data, run folder (rank 0), the plan (``plan``: a plans.json, or
    planned now; 'none': the built-in defaults), then :func:`run_train`."""
    from core.engine import prepare_run_dir, seed_everything

    from .config import RUN_FILES, resolve
    from .data import load_data
    from .plan import plan_for_training

    resolve(config, set_pairs)  # a bad --config/--set fails before the fingerprint is taken
    ds = load_data(data)
    out = prepare_run_dir(out, overwrite, clear=RUN_FILES)
    tk = dict(trainer_kwargs or {})
    planned = plan_for_training(ds, plan, out, tk.get("max_time"), tk.get("accelerator", "auto"), seed)
    cfg = resolve(config, set_pairs, planned)
    if planned:
        cfg["plan"] = {k: planned[k] for k in ("version", "fingerprint", "budget", "notes")}
    seed_everything(seed)
    init = init_from or cfg["train"].get("init_from")
    return run_train(cfg, ds, out, dict(trainer_kwargs or {}), num_workers, init, seed, progress)


def run_train(cfg: dict, ds: Mapping, out: Path, trainer_kwargs: Mapping, num_workers: int = 0,
              init_from: Optional[str] = None, seed: Optional[int] = None, progress: bool = True) -> Optional[dict]:
    """Fit, keep the best checkpoint by validation Dice, write ``out/metrics.json``. Returns the metrics
    (``None`` on the other ranks of a DDP run: rank 0 writes)."""
    from .data import split_validation

    d = cfg["data"]
    num_classes = infer_num_classes(ds, d.get("num_classes"))
    cfg["data"]["num_classes"] = num_classes
    names = class_names(ds, num_classes)
    train_cases, val_cases = split_validation(ds, d["val_fraction"], seed or 0)
    module = SegModule(cfg, ds["num_channels"], num_classes, names)
    init_info = load_pretrained_into(module.net, init_from) if init_from else None
    train_dl, val_dl = make_loaders(train_cases, val_cases, cfg, num_workers)
    if is_rank_zero():
        write_json(out / "config.json", {"config": cfg, "in_channels": ds["num_channels"], "num_classes": num_classes,
                                         "class_names": names, "train_cases": [c["name"] for c in train_cases],
                                         "val_cases": [c["name"] for c in val_cases], "init_from": init_from})
    trainer = make_trainer(out, monitor="val_dice", mode="max", progress=progress,
                           check_val_every_n_epoch=int(cfg["train"]["val_every"]), num_sanity_val_steps=0,
                           log_every_n_steps=max(1, min(10, int(cfg["train"]["steps_per_epoch"]))),
                           **trainer_kwargs)
    t0 = time.time()
    trainer.fit(module, train_dl, val_dl)
    if not trainer.is_global_zero:
        return None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = best_or_last_checkpoint(out)
    post = None
    if trainer.is_global_zero:
        from core.engine import load_module

        post = decide_postprocessing(load_module(best, SegModule), val_dl)
        store_postprocessing(sorted((out / "checkpoints").glob("*.ckpt")), post)
        cfg["postprocessing"] = post
    cb = trainer.checkpoint_callback
    result = {"best_checkpoint": str(best), "best_val_dice": float(cb.best_model_score) if cb and cb.best_model_score is not None else None,
              "last_metrics": metrics, "epochs": trainer.current_epoch, "steps": trainer.global_step,
              "train_seconds": round(time.time() - t0, 1), "parameters": count_parameters(module.net),
              "num_classes": num_classes, "class_names": names, "init_from": init_from, "init": init_info,
              "postprocessing": post}
    write_json(out / "metrics.json", result)
    return result
