"""Training: the Time-Series-Library protocol for any forecaster, early stopping on validation MSE.

With ``linear_stage.enabled`` (SpaceTime, Chimera) training runs in two stages: the linear path
(skip map + residual cycle) is fitted alone first, with its own recipe; then the SSM branch learns the
residual, starting from a zero output, with that path frozen (``linear_stage.freeze``). The branch is
kept only if it lowers the validation MSE; otherwise the stage-1 checkpoint is the result.
``max_epochs`` and the other top-level options drive stage 2; ``max_time`` bounds both stages together.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from core.engine import (Deadline, UserError, atomic_path, best_or_last_checkpoint, is_rank_zero, load_module,
                         make_trainer, merge_config, prepare_run_dir, seed_everything, write_json)
from core.engine import resolve_config as resolve_strict

from .alloc import keep_freed_memory
from .csvread import ReadOptions
from .data import SeriesData, detect_cycle, load_series
from .interrupt import SaveOnInterrupt, TrainingInterrupted, fit_interruptible
from .models import MODELS, zero_branch_output
from .module import STAGES, ForecastModule  # noqa: F401  (public names kept here)

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
    # Small data: an "epoch" of the schedule (lr decay, patience, max_epochs) spans enough passes to
    # make at least this many optimiser steps (TSLib's illness set has ~19 steps per epoch, and
    # lr halved every 19 steps stops learning long before convergence). 0 turns it off.
    min_steps_per_epoch=100,
    # stage 1 (linear path alone): CycleNet's recipe for its linear model
    linear_stage=dict(enabled=False, freeze=True, max_epochs=30, batch_size=256, lr=0.01, loss="mse",
                      lr_decay=0.9, lr_hold=2, patience=5),
)
# Per-model changes to TRAIN_DEFAULTS. DLinear: LTSF-Linear's recipe (MSE, lr 0.005; its scripts use
# 0.0005-0.05). SpaceTime/Chimera: two-stage training by default, the SSM branch kept only when it
# lowers the validation MSE below the linear path's (so the default is never the SSM alone when the
# linear path validates better), with the MSE loss that selects the checkpoint.
MODEL_TRAIN_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "dlinear": dict(lr=5e-3, loss="mse"),
    "spacetime": dict(loss="mse", linear_stage=dict(enabled=True)),
    "chimera": dict(loss="mse", linear_stage=dict(enabled=True)),
}


def resolve_config(model: str, config: Any = None, overrides: Optional[Dict[str, Any]] = None,
                   set_pairs: Sequence[str] = ()) -> Dict[str, Any]:
    """Defaults < ``config`` (a YAML/JSON path or a mapping) < ``overrides`` (explicit flags, dotted
    keys allowed) < ``set_pairs`` (``--set k.sub=v``), strictly: an unknown key at any depth is one
    line naming its closest valid names. ``model`` holds the model's keyword arguments."""
    if model not in MODELS:
        raise UserError("--model", f"unknown model {model!r}; choose from {sorted(MODELS)}")
    base = merge_config(dict(TRAIN_DEFAULTS, model=dict(MODEL_DEFAULTS[model])), MODEL_TRAIN_DEFAULTS.get(model, {}))
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


def _saved_run(run: str) -> Dict[str, Any]:
    """RUN/config.json of a run to resume (one-line UserError when there is none)."""
    p = Path(run) / "config.json"
    try:
        saved = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(p, "cannot resume: not a training run directory (no readable config.json)") from None
    if "model_name" not in saved or "read" not in saved:
        raise UserError(p, "cannot resume: the run was written by an older version (no model_name/read)")
    if not (Path(run) / "checkpoints" / "last.ckpt").is_file() and not (Path(run) / "linear_stage").is_dir():
        raise UserError(Path(run) / "checkpoints", "cannot resume: no last.ckpt")
    return saved


def data_info(data: SeriesData) -> Dict[str, Any]:
    """What evaluate/forecast need to treat a new CSV exactly like the training one."""
    return dict(columns=data.columns, target=data.target, features=data.features,
                scaler=data.scaler.state(), train_path=data.path, n_cov=data.n_cov,
                read=data.read.to_dict(), categories=data.categories)


def train(data_path: str, model: str, seq_len: int, pred_len: int, out: str, features: str = "M",
          target: Optional[str] = "OT", date_col: Optional[str] = None, fill: bool = False,
          config: Any = None, overrides: Optional[Dict[str, Any]] = None,
          max_epochs: Optional[int] = None, max_time: Optional[str] = None, seed: Optional[int] = 0,
          overwrite: bool = False, progress: bool = True, split: Optional[str] = None,
          trainer_kwargs: Optional[Dict[str, Any]] = None, num_workers: int = 0,
          read: Optional[ReadOptions] = None, resume: Optional[str] = None,
          set_pairs: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """Train on ``data_path`` by the protocol, keep the best-validation checkpoint, test it.

    A SIGTERM/SIGINT raises :class:`interrupt.TrainingInterrupted` (exit 143/130 in the CLI) with
    ``checkpoints/last.ckpt`` kept. ``resume=RUN`` continues such a run from it: data, model and
    options come from ``RUN/config.json`` (``max_epochs``/``max_time`` may be given again).

    ``read`` says how to read the CSV (time columns, dropped/categorical columns, duplicates, gaps;
    :class:`csvread.ReadOptions`); it travels in the checkpoint for evaluate/forecast.

    ``config`` is a YAML/JSON path or a mapping, ``overrides`` the explicit flags, ``set_pairs``
    the ``--set`` values (strict keys, in that precedence). ``max_time`` is the training budget of
    both stages together; the final val/test scoring (one pass over each split) follows it.

    Writes under ``out``: checkpoints/best.ckpt, logs/, config.json, metrics.json. Returns the metrics
    (``None`` on the other ranks of a DDP run: only rank 0 scores and writes).
    """
    from lightning.pytorch.callbacks import EarlyStopping

    from .infer import evaluate_split

    deadline = Deadline(max_time)
    saved = None
    if resume is not None:
        saved = _saved_run(resume)
        model, data_path, out = saved["model_name"], saved["data"], str(resume)
        seq_len, pred_len, features, target = saved["seq_len"], saved["pred_len"], saved["features"], saved["target"]
        seed, split, read = saved["seed"], saved.get("split"), ReadOptions.from_dict(saved["read"])
        date_col, fill = None, False
        config, overrides, set_pairs = {k: saved[k] for k in TRAIN_DEFAULTS}, {}, ()
    keep_freed_memory()
    cfg = resolve_config(model, config, overrides, set_pairs)
    if max_epochs is not None:
        cfg["max_epochs"] = max_epochs
    data = load_series(data_path, seq_len, pred_len, features, target, date_col, fill, split,
                       read=read)  # validates first
    cycle_acf: Dict[str, float] = {}
    if saved is not None:
        out_dir, cycle_len, cycle_acf = Path(out), int(saved["cycle_len"]), saved.get("cycle_acf", {})
        if is_rank_zero():
            (out_dir / "interrupted.json").unlink(missing_ok=True)
    else:
        out_dir = prepare_run_dir(out, overwrite, clear=("metrics.json", "config.json", "interrupted.json"))
        if cfg["cycle"] == "auto":  # the calendar's cycle, if the training rows show it
            cycle_len, cycle_acf = detect_cycle(data.timestamps, data.train_rows(), data.steps)
        else:
            cycle_len = int(cfg["cycle"])
    seed_everything(seed)
    if is_rank_zero():
        write_json(out_dir / "config.json", dict(cfg, model_name=model, data=str(data_path), seq_len=seq_len,
                                                 pred_len=pred_len, features=features, target=data.target,
                                                 seed=seed, split=split, cycle_len=cycle_len, cycle_acf=cycle_acf,
                                                 read=data.read.to_dict()), overwrite=True)

    n_train = len(data.dataset("train"))

    def epoch_group(c: Dict[str, Any]) -> int:
        """Passes per schedule epoch: enough for ``min_steps_per_epoch`` steps, at most 100 passes in all."""
        steps = max(1, n_train // c["batch_size"])
        want = int(cfg["min_steps_per_epoch"])
        if want <= 0 or steps >= want:
            return 1
        return max(1, min(-(-want // steps), 100 // max(1, int(c["max_epochs"]))))

    def make(stage: str, c: Dict[str, Any]) -> ForecastModule:
        return ForecastModule(model, cfg["model"], seq_len, pred_len, len(data.in_cols), len(data.out_cols),
                              lr=c["lr"], weight_decay=cfg["weight_decay"], loss=c["loss"],
                              lr_decay=c["lr_decay"], data_info=data_info(data), cycle_len=cycle_len,
                              lr_hold=int(c["lr_hold"]), stage=stage, lr_period=epoch_group(c))

    def fit(module: ForecastModule, run_dir: Path, c: Dict[str, Any]):
        tk = dict(trainer_kwargs or {})
        tk["max_time"] = deadline.as_max_time()  # what is left of the budget of both stages
        k = epoch_group(c)  # > 1 on small data: schedule, patience and epoch limit count groups of k
        max_ep = c["max_epochs"] * k if not (c is cfg and max_epochs is not None) else c["max_epochs"]
        last = run_dir / "checkpoints" / "last.ckpt"
        resuming = saved is not None and last.is_file()
        trainer = make_trainer(run_dir, max_epochs=max_ep, monitor="val_loss", progress=progress, resume=resuming,
                               callbacks=[EarlyStopping("val_loss", patience=c["patience"] * k, mode="min"),
                                          SaveOnInterrupt(run_dir / "checkpoints")],
                               deterministic=False, **tk)
        t0 = time.time()
        try:
            fit_interruptible(trainer, run_dir, module, data.loader("train", c["batch_size"], num_workers),
                              data.loader("val", c["batch_size"], num_workers),
                              ckpt_path=str(last) if resuming else None)
        except TrainingInterrupted as e:
            if is_rank_zero():
                write_json(out_dir / "interrupted.json",
                           dict(signal=e.signum, exit_code=e.exit_code, stage=module.hparams.stage,
                                epoch=int(trainer.current_epoch), checkpoint=str(e.checkpoint)), overwrite=True)
            raise
        cb = trainer.checkpoint_callback
        best = Path(cb.best_model_path) if cb is not None and cb.best_model_path else None
        score = float(cb.best_model_score) if cb is not None and cb.best_model_score is not None else float("inf")
        return best, score, int(trainer.current_epoch), time.time() - t0

    ls = cfg["linear_stage"]
    stage1 = None
    if ls["enabled"]:
        done = out_dir / "linear_stage" / "done.json"
        if saved is not None and done.is_file():  # resuming stage 2: stage 1 is finished
            stage1 = json.loads(done.read_text())
            linear_module = load_module(stage1["checkpoint"], ForecastModule)
        else:
            best1, score1, ep1, s1 = fit(make("linear", ls), out_dir / "linear_stage", ls)
            best1 = best1 or best_or_last_checkpoint(out_dir / "linear_stage")
            linear_module = load_module(best1, ForecastModule)
            stage1 = dict(val_mse=score1, epochs=ep1, train_time_s=round(s1, 1), checkpoint=str(best1))
            if is_rank_zero():
                write_json(done, stage1, overwrite=True)
        module = make("residual" if ls["freeze"] else "joint", cfg)
        module.model.load_state_dict(linear_module.model.state_dict())
        zero_branch_output(module.model)  # the branch starts at "no correction"
    else:
        module = make("joint", cfg)
    best, score, epochs, train_s = fit(module, out_dir, cfg)
    if not is_rank_zero():  # DDP: the other ranks trained; rank 0 scores the whole splits and writes
        return None
    if stage1 is not None:
        train_s += stage1["train_time_s"]
        stage1["branch_kept"] = score < stage1["val_mse"]
        if not stage1["branch_kept"]:  # the SSM branch never beat the linear path on validation
            best = out_dir / "checkpoints" / "best.ckpt"  # always the result
            best.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(best, overwrite=True) as tmp:
                shutil.copyfile(stage1["checkpoint"], tmp)
    if best is None:
        best = best_or_last_checkpoint(out_dir)
    module = load_module(best, ForecastModule)
    result = dict(model=model, data=str(data_path), seq_len=seq_len, pred_len=pred_len, features=features,
                  seed=seed, cycle_len=cycle_len, cycle_acf=cycle_acf, data_report=data.report, epochs=epochs,
                  epoch_group=epoch_group(cfg),
                  train_time_s=round(train_s, 1),
                  n_params=sum(p.numel() for p in module.parameters()), checkpoint=str(best))
    if stage1 is not None:  # what the linear path alone scores, to show what the SSM branch adds
        stage1["test"] = evaluate_split(linear_module, data, "test")
        result["linear_stage"] = stage1
    result["val"] = evaluate_split(module, data, "val")
    result["test"] = evaluate_split(module, data, "test")
    write_json(out_dir / "metrics.json", result)
    return result
