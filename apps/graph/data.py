"""Graph formats -> lists of PyG ``Data``: TU raw text (:mod:`apps.graph.tu`), SMILES CSV, LRGB Peptides-func, edge lists.

Every loader returns a :class:`Loaded`: the good graphs, one line per bad graph (``failures``),
notes about things that were repaired (self-loops dropped, duplicate edges merged, isolated
nodes kept) and the ``schema`` that fixes the feature encoding. Pass the training run's schema
when reading new data so categories map to the same embedding rows (unknown values -> row 0).

Each graph is a ``Data`` with
  ``x_cat (n, Kc) long`` categorical node features (TU node labels, OGB atom features),
  ``x (n, F) float`` continuous node attributes, ``edge_index (2, m)`` (both directions),
  ``e_cat (m, Ke) long``, ``edge_attr (m, Fe) float``, ``y`` (graph: ``(1,)`` long or ``(1, T)``
  float; node: ``(n,)`` / ``(n, T)``), ``name`` (graph id as the user wrote it).
"""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from core.engine import UserError

from .dataset import Loaded
from .features import ATOM_DIMS, BOND_DIMS, atom_features, bond_features
from .tu import load_tu  # noqa: F401  (a format of load_graphs; public here)

PEPTIDES_CSV = "peptide_multi_class_dataset.csv.gz"
PEPTIDES_SPLIT = "splits_random_stratified_peptide.json"


def detect_format(path: str | Path) -> str:
    """"tu", "peptides", "edgelist" or "smiles" from what ``path`` holds."""
    p = Path(path)
    if not p.exists():
        raise UserError(p, "not found")
    if p.is_dir():
        if list(p.glob("*_A.txt")):
            return "tu"
        if (p / PEPTIDES_CSV).is_file():
            return "peptides"
        if (p / "edges.csv").is_file():
            return "edgelist"
        raise UserError(p, "no TU files (*_A.txt), Peptides-func files or edges.csv in this folder")
    if p.suffix.lower() in (".csv", ".gz", ".smi", ".tsv"):
        return "smiles"
    raise UserError(p, "expected a folder (TU, Peptides-func, edge list) or a SMILES .csv file")


def load_graphs(path: str | Path, schema: Optional[Dict] = None, limit: Optional[int] = None) -> Loaded:
    """Read any supported format (see :func:`detect_format`)."""
    fmt = detect_format(path)
    if fmt == "tu":
        return load_tu(path, schema)
    if fmt == "peptides":
        return load_peptides(path, limit=limit)
    if fmt == "edgelist":
        return load_edgelist(path, schema)
    return load_smiles_csv(path, schema, limit=limit)


# ------------------------------------------------------------------------------------------- SMILES

def smiles_to_graph(smiles: str):
    """One SMILES -> ``Data`` with OGB atom (9 columns) / bond (3 columns) features, or None if RDKit
    cannot parse it. Edges in both directions, as OGB's ``smiles2graph`` (used by LRGB) lays them out."""
    from rdkit import Chem, RDLogger
    from torch_geometric.data import Data

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles.strip() else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.long)
    ei, ea = [], []
    for b in mol.GetBonds():
        i, j, f = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), bond_features(b)
        ei += [(i, j), (j, i)]
        ea += [f, f]
    edge_index = torch.tensor(ei, dtype=torch.long).t().reshape(2, -1)
    e_cat = torch.tensor(ea, dtype=torch.long).reshape(-1, len(BOND_DIMS))
    return Data(x_cat=x, x=torch.zeros(len(x), 0), edge_index=edge_index, e_cat=e_cat,
                edge_attr=torch.zeros(len(ea), 0), num_nodes=len(x))


def _smiles_schema(label_cols, classification: Optional[bool]) -> Dict:
    return dict(format="smiles", node_dim=0, edge_dim=0, node_cat=list(ATOM_DIMS), edge_cat=list(BOND_DIMS),
                label_cols=list(label_cols))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def load_smiles_csv(path: str | Path, schema: Optional[Dict] = None, smiles_col: str = "smiles",
                    limit: Optional[int] = None) -> Loaded:
    """CSV (optionally .gz) with a ``smiles`` column; other numeric columns are targets (a column named
    ``labels`` holding a list, as in LRGB's files, is a multi-target row). Optional ``id`` column names
    the molecules (default: the line number). Unparseable SMILES fail with their line number."""
    path = Path(path)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
        cols = reader.fieldnames or []
        if smiles_col not in cols:
            raise UserError(path, f"no {smiles_col!r} column (columns: {cols})")
        skip = {smiles_col, "id", "", "peptide_seq", "identifier"}
        label_cols = schema.get("label_cols", []) if schema else [c for c in cols if c not in skip]
        graphs, failures = [], []
        for i, row in enumerate(reader):
            if limit is not None and i >= limit:
                break
            ln = i + 2
            name = row.get("id") or str(ln)
            g = smiles_to_graph(row[smiles_col])
            if g is None:
                failures.append(f"{path} line {ln} ({name}): invalid SMILES {row[smiles_col][:60]!r}")
                continue
            y = _row_targets(row, label_cols)
            if isinstance(y, str):
                if schema is None or all(c in row for c in label_cols):  # labels wanted but broken
                    failures.append(f"{path} line {ln} ({name}): {y}")
                    continue
            elif y is not None:
                g.y = y.view(1, -1)
            g.name = name
            graphs.append(g)
    schema = dict(schema) if schema else _smiles_schema(label_cols, None)
    if graphs and "num_targets" not in schema and hasattr(graphs[0], "y"):
        schema["num_targets"] = int(graphs[0].y.shape[-1])
    return Loaded(graphs, failures, [], schema)


def _row_targets(row: Dict, label_cols: Sequence[str]):
    vals = []
    for c in label_cols:
        if c not in row or row[c] is None:
            return None
        raw = row[c].strip()
        try:
            vals += json.loads(raw) if raw.startswith("[") else [float(raw)]
        except ValueError:
            return f"column {c!r}: not a number or list: {raw[:30]!r}"
    return torch.tensor(vals, dtype=torch.float32) if vals else None


def load_peptides(folder: str | Path, limit: Optional[int] = None) -> Loaded:
    """LRGB Peptides-func: 10 multi-hot labels per peptide and the official train/val/test split."""
    folder = Path(folder)
    loaded = load_smiles_csv(folder / PEPTIDES_CSV, limit=limit)
    split_file = folder / PEPTIDES_SPLIT
    if not split_file.is_file():
        raise UserError(split_file, "official split file missing")
    try:
        split = json.loads(split_file.read_text())
        split = {k: [int(i) for i in split[k]] for k in ("train", "val", "test")}
    except (ValueError, KeyError, TypeError):
        raise UserError(split_file, "expected a JSON object with train/val/test index lists") from None
    # split indices refer to CSV rows; keep those we loaded, in our list's positions
    pos = {int(g.name) - 2: k for k, g in enumerate(loaded.graphs)}
    loaded.split = {k: [pos[i] for i in v if i in pos] for k, v in split.items()}
    loaded.schema["format"] = "peptides"
    loaded.schema["multilabel"] = True
    return loaded


# ---------------------------------------------------------------------------------------- edge list

def load_edgelist(folder: str | Path, schema: Optional[Dict] = None) -> Loaded:
    """A folder with ``edges.csv`` (``[graph_id,]src,dst[,label][,features...]``), optional ``nodes.csv``
    (``[graph_id,]node_id[,label][,features...]``) and ``graphs.csv`` (``graph_id,label...``).

    Node ids are 0..n-1 per graph (n from nodes.csv, else the largest id + 1). A ``label`` column in
    nodes.csv makes a node-level task, in edges.csv an edge-level one; graphs.csv a graph-level one.
    Edges are made undirected. Bad lines fail their graph with the file and line number.
    """
    import pandas as pd
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    folder = Path(folder)

    def read(name):
        p = folder / name
        if not p.is_file():
            return None
        try:
            df = pd.read_csv(p)
        except Exception as e:
            raise UserError(p, f"cannot read CSV ({str(e).splitlines()[0][:80]})") from None
        df.columns = [c.strip() for c in df.columns]
        return df

    edges, nodes, gtab = read("edges.csv"), read("nodes.csv"), read("graphs.csv")
    for name, df, need in (("edges.csv", edges, ("src", "dst")), ("nodes.csv", nodes, ("node_id",))):
        if df is not None and not set(need) <= set(df.columns):
            raise UserError(folder / name, f"needs columns {list(need)}, has {list(df.columns)}")
    failures: Dict[str, str] = {}
    notes: List[str] = []
    for df in (edges, nodes):
        if df is not None and "graph_id" not in df.columns:
            df.insert(0, "graph_id", 0)
    feat_cols = lambda df, skip: [c for c in df.columns if c not in skip]  # noqa: E731
    e_feats = feat_cols(edges, {"graph_id", "src", "dst", "label"})
    n_feats = feat_cols(nodes, {"graph_id", "node_id", "label"}) if nodes is not None else []
    if schema is None:
        schema = dict(format="edgelist", node_dim=len(n_feats), edge_dim=len(e_feats), node_cat=[], edge_cat=[],
                      node_cols=n_feats, edge_cols=e_feats)
        if nodes is not None and "label" in nodes.columns:
            schema["level"] = "node"
        elif "label" in edges.columns:
            schema["level"] = "edge"
        else:
            schema["level"] = "graph"
    else:
        n_feats, e_feats = schema.get("node_cols", []), schema.get("edge_cols", [])
        for name, df, cols in (("nodes.csv", nodes, n_feats), ("edges.csv", edges, e_feats)):
            if cols and (df is None or not set(cols) <= set(df.columns)):
                raise UserError(folder / name, f"missing feature columns {cols} the model was trained with")
    level = schema["level"]
    # numeric checks per line
    for name, df, cols in (("edges.csv", edges, ["src", "dst", *e_feats]),
                           ("nodes.csv", nodes, ["node_id", *n_feats])):
        if df is None:
            continue
        num = df[cols].apply(pd.to_numeric, errors="coerce")
        for i in np.nonzero(num.isna().any(axis=1).to_numpy())[0]:
            failures.setdefault(str(df["graph_id"].iloc[i]),
                                f"{folder / name} line {i + 2}: non-numeric or missing value (graph "
                                f"{df['graph_id'].iloc[i]})")
        df[cols] = num.fillna(0)
    glabels = {}
    if gtab is not None:
        if "graph_id" not in gtab.columns or len(gtab.columns) < 2:
            raise UserError(folder / "graphs.csv", "needs columns graph_id,label[,...]")
        lab_cols = [c for c in gtab.columns if c != "graph_id"]
        for i, row in enumerate(gtab.itertuples(index=False)):
            glabels[str(row[0])] = np.asarray(row[1:], dtype=object)
        schema.setdefault("label_cols", lab_cols)
    gids = list(dict.fromkeys([str(g) for g in edges["graph_id"]] +
                              ([str(g) for g in nodes["graph_id"]] if nodes is not None else [])))
    if level == "graph" and gtab is not None:
        for g in gtab["graph_id"].astype(str):
            if g not in gids:
                failures.setdefault(g, f"{folder / 'graphs.csv'}: graph {g} has no nodes or edges (empty graph)")
    e_groups = {str(k): v for k, v in edges.groupby(edges["graph_id"].astype(str), sort=False)}
    n_groups = ({str(k): v for k, v in nodes.groupby(nodes["graph_id"].astype(str), sort=False)}
                if nodes is not None else {})
    graphs, loops, dups, iso = [], 0, 0, 0
    for g in gids:
        if g in failures:
            continue
        e = e_groups.get(g, edges.iloc[:0])
        nd = n_groups.get(g)
        src, dst = e["src"].to_numpy().astype(np.int64), e["dst"].to_numpy().astype(np.int64)
        if nd is not None:
            ids = nd["node_id"].to_numpy().astype(np.int64)
            n = len(ids)
            if n and (sorted(ids) != list(range(n))):
                failures[g] = f"{folder / 'nodes.csv'}: graph {g}: node ids must be 0..{n - 1} once each"
                continue
            order = np.argsort(ids)
        else:
            n = int(max(src.max(initial=-1), dst.max(initial=-1)) + 1)
        if n == 0:
            failures[g] = f"{folder}: graph {g}: empty graph"
            continue
        badrow = np.nonzero((src < 0) | (dst < 0) | (src >= n) | (dst >= n))[0]
        if len(badrow):
            i = e.index[badrow[0]]
            failures[g] = (f"{folder / 'edges.csv'} line {i + 2}: graph {g}: node id outside 0..{n - 1}")
            continue
        ei = torch.from_numpy(np.stack([src, dst]))
        ea = torch.tensor(e[e_feats].to_numpy(np.float32)).reshape(len(e), len(e_feats))
        elab = torch.tensor(e["label"].to_numpy(np.float32)) if level == "edge" and "label" in e else None
        keep = ei[0] != ei[1]
        loops += int((~keep).sum())
        ei, ea = ei[:, keep], ea[keep]
        elab = elab[keep] if elab is not None else None
        m0 = ei.shape[1]
        extra = [ea] + ([elab.view(-1, 1)] if elab is not None else [])
        attrs = torch.cat(extra, 1)
        ei2, attrs = to_undirected(ei, attrs, num_nodes=n, reduce="mean")
        key = ei[0] * n + ei[1]
        dups += m0 - len(torch.unique(key))
        d = Data(edge_index=ei2, num_nodes=n)
        d.edge_attr = attrs[:, :len(e_feats)]
        d.e_cat = torch.zeros(ei2.shape[1], 0, dtype=torch.long)
        if elab is not None:
            d.y = attrs[:, len(e_feats)]
        d.x = (torch.tensor(nd[n_feats].to_numpy(np.float32)[order]) if nd is not None
               else torch.zeros(n, 0))
        d.x_cat = torch.zeros(n, 0, dtype=torch.long)
        if level == "node" and nd is not None:
            d.y = torch.tensor(pd.to_numeric(nd["label"], errors="coerce").to_numpy(np.float32)[order])
        deg = torch.bincount(ei2.reshape(-1), minlength=n)
        iso += int((deg == 0).sum())
        if level == "graph" and g in glabels:
            d.y = torch.tensor(np.asarray(glabels[g], dtype=np.float32)).view(1, -1)
        d.name = g
        graphs.append(d)
    if loops:
        notes.append(f"{folder}: {loops} self-loops dropped")
    if dups:
        notes.append(f"{folder}: {dups} duplicate edges merged")
    if iso:
        notes.append(f"{folder}: {iso} isolated nodes kept")
    _finish_labels(graphs, schema, level)
    return Loaded(graphs, list(failures.values()), notes, schema)


def _finish_labels(graphs, schema: Dict, level: str) -> None:
    """Edge-list labels arrive as floats: integers become classes (vocabulary in the schema)."""
    ys = [g.y for g in graphs if getattr(g, "y", None) is not None]
    if not ys:
        return
    if "classes" not in schema and "num_targets" not in schema:
        allv = torch.cat([y.reshape(-1) for y in ys])
        allv = allv[~torch.isnan(allv)]
        is_cls = bool(torch.all(allv == allv.round())) and ys[0].reshape(len(ys[0]), -1).shape[-1] == 1 \
            and len(torch.unique(allv)) <= max(2, len(allv) // 2)
        if is_cls:
            schema["classes"] = sorted(int(v) for v in torch.unique(allv))
        else:
            schema["num_targets"] = int(ys[0].shape[-1]) if level == "graph" else 1
    if "classes" in schema:
        cls = torch.tensor(schema["classes"], dtype=torch.float32)
        for g in graphs:
            if getattr(g, "y", None) is None:
                continue
            y = g.y.reshape(-1)
            hit = (y.view(-1, 1) == cls.view(1, -1))
            g.y = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(y, -1, dtype=torch.long)).long()
