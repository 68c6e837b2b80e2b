"""RecBole's own SASRec on our ML-100K protocol: the parity peer for ``bench_recsys.py quality`` (bench-only).

Runs in its OWN virtual environment (RecBole needs numpy<2 and pandas<3; it is never a dependency of this repo):

  python -m venv /tmp/recbole_venv && /tmp/recbole_venv/bin/pip install torch==2.13.0 \
      && /tmp/recbole_venv/bin/pip install recbole "numpy<2" "pandas<3"
  TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 OMP_NUM_THREADS=1 /tmp/recbole_venv/bin/python bench/recbole_peer.py \
      --seeds 0 1 2 --epochs 2 --batch-size 256 --lr 1e-3 --out /tmp/recbole_peer

Protocol (ours, see apps/recsys/README.md): [5,inf) user/item k-core, time order, MAX_ITEM_LIST_LENGTH 50,
leave-one-out (LS valid_and_test), full ranking, CE over all items, no negative sampling; SASRec's sizes are
apps/recsys/config.py's (RecBole's defaults). Prints one JSON row per seed (counts, val/test HR/NDCG/MRR@10,
training CPU seconds from time.process_time) and writes them to OUT/recbole.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / ".." / "shared" / "data" / "recsys"  # holds ml-100k/ml-100k.inter


def run_seed(seed: int, args) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_num_threads(args.threads)
    out = Path(args.out) / f"s{seed}"
    cfg = {
        "data_path": str(DATA_DIR.resolve()), "checkpoint_dir": str(out), "device": "cpu", "use_gpu": False,
        "seed": seed, "reproducibility": True, "show_progress": False, "save_dataset": False,
        "save_dataloaders": False, "worker": 0, "log_wandb": False,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)",
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "NDCG@10",
        "train_neg_sample_args": None, "loss_type": "CE",
        # apps/recsys/config.py MODEL_DEFAULTS["sasrec"] (= RecBole's SASRec defaults)
        "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "epochs": args.epochs, "train_batch_size": args.batch_size, "eval_batch_size": 256,
        "learner": "adam", "learning_rate": args.lr, "weight_decay": 0.0, "eval_step": 1,
        "stopping_step": args.stopping_step,
    }
    config = Config(model="SASRec", dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.WARNING)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    c0, t0 = time.process_time(), time.time()
    best_score, best_val = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    cpu, wall = time.process_time() - c0, time.time() - t0
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    return dict(impl="recbole", model="sasrec", seed=seed, epochs=args.epochs,
                # after augmentation RecBole's inter_num counts prefix samples: every interaction but each
                # user's first
                n_samples=int(dataset.inter_num), n_interactions=int(dataset.inter_num + dataset.user_num - 1),
                n_users=int(dataset.user_num - 1),
                n_items=int(dataset.item_num - 1), n_train=len(train_data.dataset),
                n_params=sum(p.numel() for p in model.parameters()),
                train_cpu_s=round(cpu, 1), train_wall_s=round(wall, 1),
                val_ndcg10=float(best_val["ndcg@10"]), ndcg10=float(test["ndcg@10"]),
                hr10=float(test["hit@10"]), mrr10=float(test["mrr@10"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/recbole_peer")
    args = ap.parse_args()
    if not os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        sys.exit("set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (RecBole reloads its best checkpoint with torch.load)")
    args.out = str(Path(args.out).resolve())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.chdir(args.out)  # RecBole writes log/ and log_tensorboard/ into the working directory
    rows = []
    for seed in args.seeds:
        row = run_seed(seed, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (Path(args.out) / "recbole.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
