"""Training: a LightningModule around any forecaster, early stopping on validation MSE.

With ``linear_stage.enabled`` (SpaceTime, Chimera) training runs in two stages: the linear path
(skip map + residual cycle) is fitted alone first, with its own recipe; then the SSM branch learns the
residual, starting from a zero output, with that path frozen (``linear_stage.freeze``). The branch is
kept only if it lowers the validation MSE; otherwise the stage-1 checkpoint is the result.
``max_epochs`` and the other top-level options drive stage 2; ``max_time`` bounds both stages together.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from core.engine import (Deadline, UserError, atomic_path, best_or_last_checkpoint, is_rank_zero, load_module,
                         make_trainer, prepare_run_dir, seed_everything, write_json)
from core.engine import resolve_config as resolve_strict

from .data import SeriesData, auto_cycle_len, load_series
from .models import MODELS, zero_branch_output
from .module import STAGES, ForecastModule  # noqa: F401  (STAGES: public name kept)

# Per-model defaults, tuned on ETTh1 validation (see bench/RESULTS.md, "## timeseries").
MODEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "chimera": dict(d_model=32, d_state=4, expand=1, n_layers=1, patch_len=8, dropout=0.2,
                    head_dropout=0.1, bidirectional=True, linear_skip=True, revin=True,
                    zero_init_head=False),
    "spacetime": dict(d_model=32, d_state=16, n_layers=2, embed_lags=8, dropout=0.1,
                      channel_mixing=False, linear_skip=True, revin=True, zero_init_head=False),
    "dlinear": dict(kernel_size=25, revin=False),
}

TRAIN_DEFAULTS: Dict[str, Any] = dict(
    batch_size=32, lr=1e-3, weight_decay=0.0, loss="mae", lr_decay=0.5, lr_hold=0, patience=3,
    max_epochs=10, cycle="auto", model={},
    # stage 1 (linear path alone): CycleNet's recipe for its linear model
    linear_stage=dict(enabled=False, freeze=True, max_epochs=30, batch_size=256, lr=0.01, loss="mse",
                      lr_decay=0.9, lr_hold=2, patience=5),
)


def resolve_config(model: str, config: Any = None, overrides: Optional[Dict[str, Any]] = None,
                   set_pairs: Sequence[str] = ()) -> Dict[str, Any]:
    """Defaults <- ``config`` (file path or mapping) <- ``overrides`` (flags) <- ``set_pairs``
    (``--set``), strictly: an unknown key at any depth is an error naming its closest valid names.
    ``model`` holds the model's keyword arguments."""
    if model not in MODELS:
        raise UserError("--model", f"unknown model {model!r}; choose from {sorted(MODELS)}")
    base = dict(TRAIN_DEFAULTS, model=dict(MODEL_DEFAULTS[model]))
    cfg = resolve_strict(base, config, overrides, set_pairs)
    if cfg["cycle"] != "auto" and (isinstance(cfg["cycle"], bool) or not isinstance(cfg["cycle"], int)
                                   or cfg["cycle"] < 0):
        raise UserError("config", f"cycle must be 'auto' or a number of steps >= 0 (0 = off), got {cfg['cycle']!r}")
    for where, c in (("loss", cfg), ("linear_stage.loss", cfg["linear_stage"])):
        if c["loss"] not in ("mse", "mae", "huber"):
            raise UserError("config", f"{where} must be mse, mae or huber, got {c['loss']!r}")
    if cfg["linear_stage"]["enabled"]:
        if not cfg["model"].get("linear_skip", False):  # only the SSM models have the option
            raise UserError("config", f"linear_stage needs an SSM model with its linear skip path "
                                      f"(spacetime or chimera, model.linear_skip=true); got {model}")
    return cfg


def data_info(data: SeriesData) -> Dict[str, Any]:
    """What evaluate/forecast need to treat a new CSV exactly like the training one."""
    return dict(columns=data.columns, target=data.target, features=data.features,
                scaler=data.scaler.state(), train_path=data.path)


def train(data_path: str, model: str, seq_len: int, pred_len: int, out: str, features: str = "M",
          target: Optional[str] = "OT", date_col: Optional[str] = None, fill: bool = False,
          config: Any = None, overrides: Optional[Dict[str, Any]] = None,
          max_epochs: Optional[int] = None, max_time: Optional[str] = None, seed: Optional[int] = 0,
          overwrite: bool = False, progress: bool = True, split: Optional[str] = None,
          trainer_kwargs: Optional[Dict[str, Any]] = None, num_workers: int = 0,
          set_pairs: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """Train on ``data_path`` by the protocol, keep the best-validation checkpoint, test it.

    Writes under ``out``: checkpoints/best.ckpt, logs/, config.json, metrics.json. Returns the metrics
    (``None`` on the other ranks of a DDP run: only rank 0 evaluates and writes). ``max_time`` is the
    training budget of both stages together; the final val/test scoring (one pass each) follows it.
    """
    from lightning.pytorch.callbacks import EarlyStopping

    from .infer import evaluate_split

    deadline = Deadline(max_time)
    cfg = resolve_config(model, config, overrides, set_pairs)
    if max_epochs is not None:
        cfg["max_epochs"] = max_epochs
    data = load_series(data_path, seq_len, pred_len, features, target, date_col, fill, split)  # validates first
    out_dir = prepare_run_dir(out, overwrite, clear=("metrics.json", "config.json"))
    cycle_len = auto_cycle_len(data.timestamps) if cfg["cycle"] == "auto" else int(cfg["cycle"])
    seed_everything(seed)
    if is_rank_zero():
        write_json(out_dir / "config.json", dict(cfg, data=str(data_path), seq_len=seq_len, pred_len=pred_len,
                                                 features=features, target=data.target, seed=seed,
                                                 cycle_len=cycle_len))

    def make(stage: str, c: Dict[str, Any]) -> ForecastModule:
        return ForecastModule(model, cfg["model"], seq_len, pred_len, len(data.in_cols), len(data.out_cols),
                              lr=c["lr"], weight_decay=cfg["weight_decay"], loss=c["loss"],
                              lr_decay=c["lr_decay"], data_info=data_info(data), cycle_len=cycle_len,
                              lr_hold=int(c["lr_hold"]), stage=stage)

    def fit(module: ForecastModule, run_dir: Path, c: Dict[str, Any]):
        tk = dict(trainer_kwargs or {})
        tk["max_time"] = deadline.as_max_time()  # what is left of the budget
        trainer = make_trainer(run_dir, max_epochs=c["max_epochs"], monitor="val_loss", progress=progress,
                               callbacks=[EarlyStopping("val_loss", patience=c["patience"], mode="min")],
                               deterministic=False, **tk)
        t0 = time.time()
        trainer.fit(module, data.loader("train", c["batch_size"], num_workers),
                    data.loader("val", c["batch_size"], num_workers))
        cb = trainer.checkpoint_callback
        best = Path(cb.best_model_path) if cb is not None and cb.best_model_path else None
        score = float(cb.best_model_score) if cb is not None and cb.best_model_score is not None else float("inf")
        return best, score, int(trainer.current_epoch), time.time() - t0

    ls = cfg["linear_stage"]
    stage1 = None
    if ls["enabled"]:
        best1, score1, ep1, s1 = fit(make("linear", ls), out_dir / "linear_stage", ls)
        best1 = best1 or best_or_last_checkpoint(out_dir / "linear_stage")
        linear_module = load_module(best1, ForecastModule)
        module = make("residual" if ls["freeze"] else "joint", cfg)
        module.model.load_state_dict(linear_module.model.state_dict())
        zero_branch_output(module.model)  # the branch starts at "no correction"
        stage1 = dict(val_mse=score1, epochs=ep1, train_time_s=round(s1, 1), checkpoint=str(best1))
    else:
        module = make("joint", cfg)
    best, score, epochs, train_s = fit(module, out_dir, cfg)
    if not is_rank_zero():  # DDP: the other ranks trained; rank 0 scores and writes
        return None
    if stage1 is not None:
        train_s += stage1["train_time_s"]
        stage1["branch_kept"] = score < stage1["val_mse"]
        if not stage1["branch_kept"]:  # the SSM branch never beat the linear path on validation
            best = out_dir / "checkpoints" / "best.ckpt"  # always the result
            with atomic_path(best, overwrite=True) as tmp:
                shutil.copyfile(stage1["checkpoint"], tmp)
    if best is None:
        best = best_or_last_checkpoint(out_dir)
    module = load_module(best, ForecastModule)
    result = dict(model=model, data=str(data_path), seq_len=seq_len, pred_len=pred_len, features=features,
                  seed=seed, cycle_len=cycle_len, epochs=epochs, train_time_s=round(train_s, 1),
                  n_params=sum(p.numel() for p in module.parameters()), checkpoint=str(best))
    if stage1 is not None:  # what the linear path alone scores, to show what the SSM branch adds
        stage1["test"] = evaluate_split(linear_module, data, "test")
        result["linear_stage"] = stage1
    result["val"] = evaluate_split(module, data, "val")
    result["test"] = evaluate_split(module, data, "test")
    write_json(out_dir / "metrics.json", result)
    return result
