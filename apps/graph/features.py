"""OGB atom/bond features (as LRGB uses them) and positional/structural encodings, cached.

Atom columns (OGB ``atom_to_feature_vector``): atomic number, chirality, degree, formal charge,
number of Hs, radical electrons, hybridisation, aromatic, in ring; bond columns: type, stereo,
conjugated. Values outside OGB's lists go to its last ("misc") entry.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

_CHIRALITY = ["CHI_UNSPECIFIED", "CHI_TETRAHEDRAL_CW", "CHI_TETRAHEDRAL_CCW", "CHI_OTHER", "misc"]
_HYBRID = ["SP", "SP2", "SP3", "SP3D", "SP3D2", "misc"]
_BOND_TYPE = ["SINGLE", "DOUBLE", "TRIPLE", "AROMATIC", "misc"]
_STEREO = ["STEREONONE", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS", "STEREOANY"]
# (list of values, last is "misc") per atom column
_ATOM_LISTS = [list(range(1, 119)) + ["misc"], _CHIRALITY, list(range(11)) + ["misc"],
               list(range(-5, 6)) + ["misc"], list(range(9)) + ["misc"], list(range(5)) + ["misc"],
               _HYBRID, [False, True], [False, True]]
ATOM_DIMS = [len(v) for v in _ATOM_LISTS]           # [119, 5, 12, 12, 10, 6, 6, 2, 2]
BOND_DIMS = [len(_BOND_TYPE), len(_STEREO), 2]      # [5, 6, 2]


def _index(values: list, v) -> int:
    try:
        return values.index(v)
    except ValueError:
        return len(values) - 1


def atom_features(atom) -> List[int]:
    """RDKit atom -> 9 OGB category indices."""
    raw = [atom.GetAtomicNum(), str(atom.GetChiralTag()), atom.GetTotalDegree(), atom.GetFormalCharge(),
           atom.GetTotalNumHs(), atom.GetNumRadicalElectrons(), str(atom.GetHybridization()),
           atom.GetIsAromatic(), atom.IsInRing()]
    return [_index(vals, v) for vals, v in zip(_ATOM_LISTS, raw)]


def bond_features(bond) -> List[int]:
    """RDKit bond -> 3 OGB category indices (type, stereo, conjugated)."""
    return [_index(_BOND_TYPE, str(bond.GetBondType())), _index(_STEREO, str(bond.GetStereo())),
            int(bond.GetIsConjugated())]


# ------------------------------------------------------------------------------------------- PE / SE

def add_encodings(graphs: Sequence, rw_steps: int = 16, lap_k: int = 8) -> None:
    """Add ``rwse (n, rw_steps)`` (PyG ``AddRandomWalkPE``: return probabilities after 1..k steps) and
    ``lap_pe (n, lap_k)`` (PyG ``AddLaplacianEigenvectorPE``, zero-padded for graphs with <= lap_k
    nodes) to every graph in place. Sign flipping of ``lap_pe`` happens in the model, in training."""
    from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE

    rw = AddRandomWalkPE(walk_length=rw_steps, attr_name="rwse") if rw_steps else None
    for g in graphs:
        n = int(g.num_nodes)
        if rw is not None:
            if g.edge_index.numel():
                g.rwse = rw(g).rwse  # transforms return a shallow copy
            else:  # PyG's transform needs an edge
                g.rwse = torch.zeros(n, rw_steps)
        if lap_k:
            k = min(lap_k, n - 2)  # the eigensolver needs k < n - 1 for sparse, skips the trivial one
            pe = torch.zeros(n, lap_k)
            if k >= 1 and g.edge_index.numel():
                t = AddLaplacianEigenvectorPE(k=k, attr_name="lap_pe", is_undirected=True)
                try:
                    out = t(g.clone()).lap_pe
                    pe[:, :out.shape[1]] = out.float()
                except Exception:  # disconnected/degenerate spectra: keep zeros (documented)
                    pass
            g.lap_pe = pe


def cache_dir() -> Path:
    """``$SSM_GRAPH_CACHE`` or ``~/.cache/ssm-pipelines/graph``."""
    return Path(os.environ.get("SSM_GRAPH_CACHE", Path.home() / ".cache" / "ssm-pipelines" / "graph"))


def cache_key(path: str | Path, extra: Dict) -> str:
    """Hash of the input files' names, sizes and mtimes plus ``extra`` (encoding settings, schema)."""
    p = Path(path)
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


_FIELDS = ("x_cat", "x", "edge_index", "e_cat", "edge_attr", "y", "rwse", "lap_pe")


def save_cache(path: Path, loaded) -> None:
    """Graphs as plain tensors (loadable with ``weights_only=True``), written atomically."""
    from core.engine import atomic_save

    rec = [{k: getattr(g, k) for k in _FIELDS if getattr(g, k, None) is not None}
           | {"num_nodes": int(g.num_nodes), "name": g.name} for g in loaded.graphs]
    obj = dict(graphs=rec, failures=loaded.failures, notes=loaded.notes, schema=json.dumps(loaded.schema),
               split=loaded.split)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(obj, path, overwrite=True)


def load_cache(path: Path):
    """The :class:`~apps.graph.dataset.Loaded` saved by :func:`save_cache`, or None if absent/unreadable."""
    from torch_geometric.data import Data

    from .dataset import Loaded

    if not path.is_file():
        return None
    try:
        obj = torch.load(path, weights_only=True)
    except Exception:
        return None
    graphs = []
    for r in obj["graphs"]:
        name, n = r.pop("name"), r.pop("num_nodes")
        g = Data(**r, num_nodes=n)
        g.name = name
        graphs.append(g)
    return Loaded(graphs, obj["failures"], obj["notes"], json.loads(obj["schema"]), obj["split"])


def load_encoded(path: str | Path, schema: Optional[Dict] = None, rw_steps: int = 16, lap_k: int = 8,
                 limit: Optional[int] = None, use_cache: bool = True):
    """:func:`apps.graph.data.load_graphs` + :func:`add_encodings`, cached under :func:`cache_dir`
    (keyed by the files, settings and schema) so encodings are computed once per dataset."""
    from .data import load_graphs

    key = cache_key(path, dict(schema=schema, rw=rw_steps, lap=lap_k, limit=limit, v=1))
    cfile = cache_dir() / f"{key}.pt"
    if use_cache:
        hit = load_cache(cfile)
        if hit is not None:
            return hit
    loaded = load_graphs(path, schema, limit=limit)
    add_encodings(loaded.graphs, rw_steps, lap_k)
    if use_cache and loaded.graphs:
        try:
            save_cache(cfile, loaded)
        except OSError:  # a read-only home is not an error
            pass
    return loaded
