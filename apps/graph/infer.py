"""Evaluate and predict with a trained checkpoint (its config and data schema travel inside it)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from core.engine import UserError, atomic_write, ensure_new, safe_load


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """A :class:`~apps.graph.module.GraphModule` from ``best.ckpt``/``last.ckpt`` or a run folder, on ``device``.

    Only our own checkpoints load: the file is read with ``weights_only=True`` first (no code runs),
    its hyper-parameters must be a GraphModule's, then the module is rebuilt from them."""
    from core.engine import best_or_last_checkpoint

    from .module import GraphModule

    p = Path(path)
    if p.is_dir():
        p = best_or_last_checkpoint(p)
    ck = safe_load(p)  # weights_only + the project's allow-list: pickled code is refused in one line
    try:
        hp = ck["hyper_parameters"]
        module = GraphModule(**{k: hp[k] for k in ("model", "schema", "task", "level", "lr", "weight_decay",
                                                   "max_epochs")})
        module.load_state_dict(ck["state_dict"])
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(p, f"not an ssm-graph checkpoint ({first})") from None
    from core.engine import resolve_device

    return module.to(resolve_device(device)).eval()


@torch.no_grad()
def outputs(module, loader) -> Tuple[torch.Tensor, torch.Tensor, List]:
    """Raw predictions, targets (or None) and the batches' ids, over ``loader``."""
    from .module import select_targets

    module.eval()
    dev = module.device
    preds, ys, ids = [], [], []
    for batch in loader:
        b = batch if dev.type == "cpu" else batch.clone().to(dev)  # PyG's .to() moves in place
        pred = module(b)
        if getattr(b, "y", None) is not None:
            p, y = select_targets(b, pred, module.level)
            preds.append(p.float().cpu())
            ys.append(y.cpu())
        else:
            k = int(getattr(b, "batch_size", len(pred))) if module.level == "node" else len(pred)
            preds.append(pred[:k].float().cpu())
        ids.append(batch)
    return torch.cat(preds), (torch.cat(ys) if ys else None), ids


def evaluate_loader(module, loader) -> Dict[str, float]:
    """``{metric: value, "loss": value, "n": rows}`` of ``module`` over a labelled loader."""
    from .module import METRIC, compute_loss, compute_metric

    pred, y, _ = outputs(module, loader)
    if y is None:
        raise UserError("data", "no labels to evaluate against")
    name = METRIC[module.task][0]
    return {name: compute_metric(module.task, pred, y), "loss": float(compute_loss(module.task, pred, y)),
            "n": int(len(pred))}


def _loader(module, graphs, batch_size: int = 64):
    from torch_geometric.loader import DataLoader

    from .sampling import neighbor_loader

    if module.level == "node":
        g = graphs[0]
        return neighbor_loader(g, [15, 10], torch.arange(int(g.num_nodes)), batch_size=1024)
    return DataLoader(graphs, batch_size=batch_size)


def read_for_model(module, path: str):
    """Graphs of ``path`` encoded with the checkpoint's schema and PE/SE settings."""
    from .features import load_encoded

    m = module.hparams.model
    return load_encoded(path, module.hparams.schema, rw_steps=int(m.get("rw_steps", 16)),
                        lap_k=int(m.get("lap_k", 8)))


def evaluate(module, data: str, split: Optional[str] = None) -> Dict[str, Any]:
    """Metrics of ``module`` on labelled ``data`` (its official ``split`` subset when asked).
    Bad graphs are reported one line each and skipped; ``failed`` counts them."""
    loaded = read_for_model(module, data)
    _print_problems(loaded)
    graphs = loaded.graphs
    if split:
        if loaded.split is None:
            raise UserError(data, f"has no official split; --split {split} needs one")
        graphs = [graphs[i] for i in loaded.split[split]]
    if not graphs:
        raise UserError(data, "no usable graphs")
    res = evaluate_loader(module, _loader(module, graphs))
    return {**res, "failed": len(loaded.failures)}


def _print_problems(loaded) -> None:
    for line in loaded.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in loaded.failures:
        print(f"error: {line}", file=sys.stderr)


def predict(module, data: str, output: str, overwrite: bool = False) -> Dict[str, int]:
    """Write predictions for every good graph of ``data`` to ``output`` (CSV, written atomically).

    Rows: graph level ``graph_id,...``; node level ``graph_id,node_id,...``; edge level
    ``graph_id,src,dst,...``. Columns: classification ``pred`` + ``prob_<class>``; multilabel
    ``prob_<k>``; regression ``pred_<k>``. Returns ``{"written": rows, "failed": graphs}``; bad
    graphs are listed on stderr, one line each."""
    ensure_new(output, overwrite)
    loaded = read_for_model(module, data)
    _print_problems(loaded)
    if not loaded.graphs:
        raise UserError(data, "no usable graphs")
    schema, task, level = module.hparams.schema, module.task, module.level
    rows: List[List] = []
    if level == "node":
        g = loaded.graphs[0]
        for b in _loader(module, loaded.graphs):
            with torch.no_grad():
                p = module(b)[: int(b.batch_size)]
            for nid, pi in zip(b.n_id[: int(b.batch_size)].tolist(), p):
                rows.append([g.name, nid, *_format(pi, task, schema)])
        rows.sort(key=lambda r: r[1])
    else:
        for b in _loader(module, loaded.graphs):
            with torch.no_grad():
                p = module(b)
            if level == "graph":
                for name, pi in zip(b.name, p):
                    rows.append([name, *_format(pi, task, schema)])
            else:
                eb = b.batch[b.edge_index[0]]
                ptr = b.ptr
                for j, pi in enumerate(p):
                    gi = int(eb[j])
                    u, v = (b.edge_index[:, j] - ptr[gi]).tolist()
                    rows.append([b.name[gi], u, v, *_format(pi, task, schema)])
    key = {"graph": ["graph_id"], "node": ["graph_id", "node_id"], "edge": ["graph_id", "src", "dst"]}[level]
    k = len(rows[0]) - len(key) if rows else 0
    if task == "classification":
        cols = ["pred"] + [f"prob_{c}" for c in schema["classes"]]
    elif task == "multilabel":
        cols = [f"prob_{j}" for j in range(k)]
    else:
        cols = [f"pred_{j}" for j in range(k)]
    with atomic_write(output, overwrite=overwrite, newline="") as f:
        w = csv.writer(f)
        w.writerow(key + cols)
        w.writerows(rows)
    return {"written": len(rows), "failed": len(loaded.failures)}


def _format(p: torch.Tensor, task: str, schema: Dict) -> List:
    if task == "classification":
        prob = torch.softmax(p.float(), -1)
        return [schema["classes"][int(prob.argmax())], *[f"{v:.6f}" for v in prob.tolist()]]
    if task == "multilabel":
        return [f"{v:.6f}" for v in torch.sigmoid(p.float()).tolist()]
    return [f"{v:.6g}" for v in p.float().tolist()]
