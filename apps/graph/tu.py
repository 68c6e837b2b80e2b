"""The TU raw text format (``*_A.txt``, ``*_graph_indicator.txt``, labels and attributes) read with
PyG's ``read_tu_data`` after per-graph checks (one line per bad graph, the others go on)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from core.engine import UserError

from .dataset import Loaded


def _read_rows(path: Path, width: Optional[int] = None, dtype=float, what: str = "values"):
    """Comma-separated rows -> (array (n, w), bad {line_no: problem}); rows of the wrong width are bad."""
    fast = _read_fast(path, width, dtype)
    if fast is not None:
        return fast, {}
    rows, bad = [], {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            parts = [s for s in line.strip().split(",")]
            if parts == [""]:
                parts = []
            try:
                vals = [dtype(float(s)) if dtype is int else float(s) for s in parts]
            except ValueError:
                bad[i] = f"not numeric: {line.strip()[:40]!r}"
                vals = None
            if vals is not None:
                if width is None and vals:
                    width = len(vals)
                if len(vals) != width:
                    bad[i] = f"{len(vals)} {what} where the file's rows have {width}"
                    vals = None
            rows.append(vals if vals is not None else [0] * (width or 0))
    arr = np.asarray(rows, dtype=np.int64 if dtype is int else np.float32).reshape(len(rows), width or 0)
    return arr, bad


def _read_fast(path: Path, width: Optional[int], dtype):
    """pandas' C reader when every row is well formed (the common case); None sends us to the
    line-by-line reader that names bad lines."""
    import pandas as pd

    try:
        df = pd.read_csv(path, header=None, skipinitialspace=True, dtype=np.float64)
    except Exception:
        return None
    if df.isna().any().any() or (width is not None and df.shape[1] != width):
        return None
    arr = df.to_numpy()
    if dtype is int:
        if not np.all(arr == np.round(arr)):
            return None
        return arr.astype(np.int64)
    return arr.astype(np.float32)


def _tu_prefix(folder: Path) -> str:
    hits = sorted(folder.glob("*_A.txt"))
    if len(hits) != 1:
        raise UserError(folder, f"expected one *_A.txt file, found {len(hits)}")
    return hits[0].name[:-len("_A.txt")]


def load_tu(folder: str | Path, schema: Optional[Dict] = None) -> Loaded:
    """Read a TU dataset folder with ``torch_geometric.io.read_tu_data`` after checking the files agree.

    File-level disagreements (label file of the wrong length, unsorted graph indicator) raise
    :class:`UserError`. Per-graph problems (edge ids outside 1..n, an edge joining two graphs,
    attribute rows of the wrong width, a graph id with no nodes) drop that graph with one line
    naming graph id and file line; the rest are read. Node/edge labels are encoded against the
    schema's vocabulary (built from this data when ``schema`` is None).
    """
    from torch_geometric.data.separate import separate
    from torch_geometric.data import Data
    from torch_geometric.io import read_tu_data

    folder = Path(folder)
    prefix = _tu_prefix(folder)
    f = lambda name: folder / f"{prefix}_{name}.txt"  # noqa: E731
    if not f("graph_indicator").is_file():
        raise UserError(f("graph_indicator"), "missing (every TU dataset needs it)")
    gi, bad = _read_rows(f("graph_indicator"), 1, int, "ids")
    if bad:
        ln, msg = next(iter(bad.items()))
        raise UserError(f"{f('graph_indicator')} line {ln}", msg)
    gi = gi[:, 0]
    n = len(gi)
    if n == 0:
        raise UserError(f("graph_indicator"), "is empty")
    if np.any(np.diff(gi) < 0) or gi.min() < 1:
        raise UserError(f("graph_indicator"), "graph ids must start at 1 and never decrease")
    failures: Dict[int, str] = {}  # graph id -> first problem
    notes: List[str] = []

    def fail(g: int, msg: str):
        failures.setdefault(int(g), f"graph {int(g)}: {msg}")

    n_graphs = int(gi.max())
    labels = None
    regression = f("graph_attributes").is_file()
    lab_file = f("graph_attributes") if regression else f("graph_labels")
    if lab_file.is_file():
        labels, bad = _read_rows(lab_file, None, float if regression else int, "values")
        if bad:
            ln, msg = next(iter(bad.items()))
            raise UserError(f"{lab_file} line {ln}", msg)
        if len(labels) != n_graphs:
            raise UserError(lab_file, f"has {len(labels)} lines but {f('graph_indicator').name} names "
                                      f"{n_graphs} graphs")
    counts = np.bincount(gi, minlength=n_graphs + 1)
    for g in np.nonzero(counts[1:] == 0)[0] + 1:
        fail(g, f"empty graph (no node in {f('graph_indicator').name})")

    A, bad = _read_rows(f("A"), 2, int, "node ids")
    for ln, msg in bad.items():
        raise UserError(f"{f('A')} line {ln}", msg)
    m = len(A)
    ok_u = (A[:, 0] >= 1) & (A[:, 0] <= n)
    ok_v = (A[:, 1] >= 1) & (A[:, 1] <= n)
    for ln in np.nonzero(~(ok_u & ok_v))[0]:
        u, v = A[ln]
        side = u if ok_u[ln] else v if ok_v[ln] else None
        where = f"graph {int(gi[side - 1])}" if side is not None else "no graph"
        msg = f"{f('A').name} line {ln + 1}: node id {u if not ok_u[ln] else v} outside 1..{n}"
        if side is None:
            failures.setdefault(-(ln + 1), msg + f" ({where})")
        else:
            fail(gi[side - 1], msg)
    good = ok_u & ok_v
    gu = np.where(good, gi[np.clip(A[:, 0], 1, n) - 1], 0)
    gv = np.where(good, gi[np.clip(A[:, 1], 1, n) - 1], 0)
    for ln in np.nonzero(good & (gu != gv))[0]:
        msg = f"{f('A').name} line {ln + 1}: edge joins graphs {gu[ln]} and {gv[ln]}"
        fail(gu[ln], msg)
        fail(gv[ln], msg)

    def per_row_file(name, rows_expected, owner_graph, dtype):
        p = f(name)
        if not p.is_file():
            return None
        arr, bad = _read_rows(p, None, dtype, "values")
        if len(arr) != rows_expected:
            raise UserError(p, f"has {len(arr)} lines, expected {rows_expected} (one per line of "
                               f"{'graph_indicator' if rows_expected == n else 'A'})")
        for ln, msg in bad.items():
            fail(owner_graph(ln - 1), f"{p.name} line {ln}: {msg}")
        return arr

    node_lab = per_row_file("node_labels", n, lambda i: gi[i], int)
    per_row_file("node_attributes", n, lambda i: gi[i], float)
    edge_lab = per_row_file("edge_labels", m, lambda i: gu[i] if good[i] else 0, int)
    per_row_file("edge_attributes", m, lambda i: gu[i] if good[i] else 0, float)

    # Repairs, not failures: read_tu_data drops self-loops and merges duplicates.
    loops = good & (A[:, 0] == A[:, 1])
    if loops.any():
        notes.append(f"{int(loops.sum())} self-loops dropped (graphs {_few(np.unique(gu[loops]))})")
    key = (A[:, 0] - 1) * n + (A[:, 1] - 1)
    uk, cnt = np.unique(key[good], return_counts=True)
    if (cnt > 1).any():
        dup_g = np.unique(gi[uk[cnt > 1] // n])
        notes.append(f"{int((cnt - 1).sum())} duplicate edges merged (graphs {_few(dup_g)})")
    deg = np.bincount(np.concatenate([A[good, 0], A[good, 1]]), minlength=n + 1)[1:]
    iso = deg == 0
    if iso.any():
        notes.append(f"{int(iso.sum())} isolated nodes kept (graphs {_few(np.unique(gi[iso]))})")

    bad_graphs = sorted(g for g in failures if g > 0)
    keep_graph = np.ones(n_graphs + 1, dtype=bool)
    keep_graph[0] = False
    keep_graph[bad_graphs] = False
    keep_graph[counts == 0] = False
    src = folder
    tmp = None
    if bad_graphs or not good.all() or (counts[1:] == 0).any() or keep_graph.sum() == 1:
        # read_tu_data reads whole files: give it a copy without the failed graphs.
        tmp = Path(tempfile.mkdtemp(prefix="ssm-graph-tu-"))
        src = _write_filtered_tu(folder, prefix, tmp, gi, A, good, gu, keep_graph, labels is not None)
    try:
        data, slices, sizes = read_tu_data(str(src), prefix)
    except Exception as e:  # anything our checks missed
        raise UserError(folder, f"read_tu_data failed: {str(e).splitlines()[0][:160]}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    kept_ids = np.nonzero(keep_graph)[0]  # original graph ids, in order
    node_keep = keep_graph[gi]
    raw_node_lab = node_lab[node_keep] if node_lab is not None else None
    # raw edge labels by (global u, global v) key of the kept graphs, for read_tu_data's coalesced order
    new_node_id = np.cumsum(node_keep) - 1
    if edge_lab is not None:
        ekeep = good & keep_graph[gu] & ~loops
        ekey = new_node_id[A[ekeep, 0] - 1] * n + new_node_id[A[ekeep, 1] - 1]
        order = np.argsort(ekey, kind="stable")
        ekey, elab = ekey[order], edge_lab[ekeep][order]

    schema = dict(schema) if schema else _tu_schema(raw_node_lab, edge_lab, labels, regression, sizes)
    na, ea = sizes["num_node_attributes"], sizes["num_edge_attributes"]
    if schema.get("format") not in (None, "tu") or schema.get("node_dim", na) != na \
            or schema.get("edge_dim", ea) != ea:
        raise UserError(folder, f"features do not match the model's: {na} node / {ea} edge attributes, "
                                f"model has {schema.get('node_dim')} / {schema.get('edge_dim')}")
    graphs = []
    node_off = 0
    for k, gid in enumerate(kept_ids):
        d = separate(cls=Data, batch=data, idx=k, slice_dict=slices, decrement=False)
        nn_ = int(slices["x"][k + 1] - slices["x"][k]) if "x" in slices else int(counts[gid])
        g = Data(edge_index=d.edge_index, num_nodes=nn_)
        g.x = d.x[:, :na].float() if d.x is not None and na else torch.zeros(nn_, 0)
        if raw_node_lab is not None:
            g.x_cat = _encode(raw_node_lab[node_off:node_off + nn_], schema["node_vocab"])
        else:
            g.x_cat = torch.zeros(nn_, 0, dtype=torch.long)
        e = d.edge_index.shape[1]
        g.edge_attr = d.edge_attr[:, :ea].float() if d.edge_attr is not None and ea else torch.zeros(e, 0)
        if edge_lab is not None:
            gk = (d.edge_index[0].numpy() + node_off) * n + d.edge_index[1].numpy() + node_off
            pos = np.clip(np.searchsorted(ekey, gk), 0, max(len(ekey) - 1, 0))
            g.e_cat = _encode(elab[pos], schema["edge_vocab"])
        else:
            g.e_cat = torch.zeros(e, 0, dtype=torch.long)
        if labels is not None:
            g.y = _encode_label(labels[gid - 1], schema)
        g.name = str(int(gid))
        graphs.append(g)
        node_off += nn_
    fails = [failures[g] for g in sorted(failures, key=lambda g: (g < 0, abs(g)))]
    return Loaded(graphs, [f"{folder}: {x}" for x in fails], [f"{folder}: {x}" for x in notes], schema)


def _few(ids, k: int = 5) -> str:
    ids = [str(int(i)) for i in ids]
    return ", ".join(ids[:k]) + (f" and {len(ids) - k} more" if len(ids) > k else "")


def _write_filtered_tu(folder, prefix, tmp, gi, A, good, gu, keep_graph, has_labels) -> Path:
    node_keep = keep_graph[gi]
    new_id = np.cumsum(node_keep)  # 1-based for kept nodes
    new_gid = np.cumsum(keep_graph)
    edge_keep = good & keep_graph[np.where(good, gu, 0)]
    src = lambda name: folder / f"{prefix}_{name}.txt"  # noqa: E731
    dst = lambda name: tmp / f"{prefix}_{name}.txt"  # noqa: E731
    # PyG's text reader squeezes one-line files to 0-d tensors: a single graph is written twice
    # and the copy ignored by the caller.
    reps = 2 if keep_graph.sum() == 1 else 1
    n_kept = int(node_keep.sum())
    edges = np.stack([new_id[A[edge_keep, 0] - 1], new_id[A[edge_keep, 1] - 1]], 1)
    np.savetxt(dst("A"), np.concatenate([edges + r * n_kept for r in range(reps)]), fmt="%d", delimiter=", ")
    np.savetxt(dst("graph_indicator"), np.concatenate([new_gid[gi[node_keep]] + r for r in range(reps)]), fmt="%d")
    for name, mask in (("node_labels", node_keep), ("node_attributes", node_keep),
                       ("edge_labels", edge_keep), ("edge_attributes", edge_keep),
                       ("graph_labels", keep_graph[1:]), ("graph_attributes", keep_graph[1:])):
        if src(name).is_file():
            lines = src(name).read_text(encoding="utf-8", errors="replace").splitlines()
            if name.startswith("graph") and not has_labels:
                continue
            kept = [ln for ln, k in zip(lines, mask) if k]
            dst(name).write_text("\n".join(kept * reps) + "\n", encoding="utf-8")
    return tmp


def _tu_schema(node_lab, edge_lab, labels, regression, sizes) -> Dict:
    vocab = lambda arr: [sorted(int(v) for v in np.unique(arr[:, j])) for j in range(arr.shape[1])]  # noqa
    s = dict(format="tu", node_dim=sizes["num_node_attributes"], edge_dim=sizes["num_edge_attributes"],
             node_vocab=vocab(node_lab) if node_lab is not None else [],
             edge_vocab=vocab(edge_lab) if edge_lab is not None else [])
    s["node_cat"] = [len(v) + 1 for v in s["node_vocab"]]  # row 0: a value unseen in training
    s["edge_cat"] = [len(v) + 1 for v in s["edge_vocab"]]
    if labels is not None and not regression:
        s["classes"] = sorted(int(v) for v in np.unique(labels))
    elif labels is not None:
        s["num_targets"] = int(labels.shape[1])
    return s


def _encode(raw: np.ndarray, vocab: Sequence[Sequence[int]]) -> torch.Tensor:
    out = np.zeros(raw.shape, dtype=np.int64)
    for j, values in enumerate(vocab):
        v = np.asarray(values)
        pos = np.clip(np.searchsorted(v, raw[:, j]), 0, len(v) - 1)
        out[:, j] = np.where(v[pos] == raw[:, j], pos + 1, 0)
    return torch.from_numpy(out)


def _encode_label(row: np.ndarray, schema: Dict) -> torch.Tensor:
    if "classes" in schema:
        value = int(row[0])
        idx = schema["classes"].index(value) if value in schema["classes"] else -1  # -1: ignored
        return torch.tensor([idx])
    return torch.as_tensor(np.asarray(row, dtype=np.float32)).view(1, -1)
