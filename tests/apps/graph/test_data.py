"""Formats against the real files in ../shared/data/graph and hand-made bad inputs."""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from apps.graph.data import load_edgelist, load_graphs, load_smiles_csv, load_tu, smiles_to_graph
from core.engine import UserError

from .conftest import DATA, need, two_triangles_and_path, write_tu_files


def test_mutag_counts_match_readme():
    loaded = load_tu(need(DATA / "MUTAG"))
    g = loaded.graphs
    assert len(g) == 188 and not loaded.failures  # README: 188 chemical compounds
    assert sum(x.num_nodes for x in g) == 3371     # lines of MUTAG_graph_indicator.txt
    assert sum(x.edge_index.shape[1] for x in g) == 7442  # lines of MUTAG_A.txt (both directions)
    assert loaded.schema["node_vocab"] == [[0, 1, 2, 3, 4, 5, 6]]  # C N O F I Cl Br
    assert loaded.schema["edge_vocab"] == [[0, 1, 2, 3]]           # aromatic single double triple
    y = torch.cat([x.y for x in g])
    assert loaded.schema["classes"] == [-1, 1] and int((y == 1).sum()) == 125 and int((y == 0).sum()) == 63
    # labels line up with the raw file: graph 1 is mutagenic (label 1)
    assert g[0].name == "1" and loaded.schema["classes"][int(g[0].y)] == 1


def test_proteins_counts_match_readme():
    loaded = load_tu(need(DATA / "PROTEINS"))
    assert len(loaded.graphs) == 1113 and not loaded.failures
    assert sum(x.num_nodes for x in loaded.graphs) == 43471
    assert loaded.schema["node_dim"] == 1 and loaded.schema["classes"] == [1, 2]
    assert any("isolated" in n for n in loaded.notes)  # 5 graphs have isolated nodes: kept, noted


def test_peptides_func_counts_and_official_split():
    root = need(DATA / "peptides-func")
    with gzip.open(root / "peptide_multi_class_dataset.csv.gz", "rt") as f:
        assert sum(1 for _ in f) - 1 == 15535
    split = json.loads((root / "splits_random_stratified_peptide.json").read_text())
    sizes = [len(split[k]) for k in ("train", "val", "test")]
    assert sizes == [10873, 2331, 2331]
    assert len(set().union(*map(set, split.values()))) == 15535
    loaded = load_graphs(root, limit=40)
    assert len(loaded.graphs) == 40 and not loaded.failures
    g = loaded.graphs[0]
    assert g.x_cat.shape[1] == 9 and g.e_cat.shape[1] == 3 and g.y.shape == (1, 10)
    assert sum(len(v) for v in loaded.split.values()) == 40  # split indices map to the rows read
    assert loaded.schema["multilabel"]


def test_ogb_features_hand_checked():
    g = smiles_to_graph("CCO")
    # atomic num 6 -> 5; chirality 0; total degree 4; charge 0 -> 5; 3 H; 0 radicals; SP3 -> 2; no arom/ring
    assert g.x_cat.tolist() == [[5, 0, 4, 5, 3, 0, 2, 0, 0], [5, 0, 4, 5, 2, 0, 2, 0, 0], [7, 0, 2, 5, 1, 0, 2, 0, 0]]
    assert g.edge_index.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]] and g.e_cat.tolist() == [[0, 0, 0]] * 4
    b = smiles_to_graph("c1ccccc1")
    assert b.x_cat[0].tolist() == [5, 0, 3, 5, 1, 0, 1, 1, 1] and b.e_cat[0].tolist() == [3, 0, 1]
    assert smiles_to_graph("C1CC") is None and smiles_to_graph("") is None


def test_random_walk_se_and_laplacian_pe_hand_checked():
    from torch_geometric.data import Data

    from apps.graph.features import add_encodings

    cyc = Data(edge_index=torch.tensor([[0, 1, 1, 2, 2, 3, 3, 0], [1, 0, 2, 1, 3, 2, 0, 3]]), num_nodes=4)
    tri = Data(edge_index=torch.tensor([[0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]]), num_nodes=3)
    path = Data(edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
    add_encodings([cyc, tri, path], rw_steps=4, lap_k=3)
    # return probabilities after 1..4 steps: 4-cycle 0, 1/2, 0, 1/2; triangle 0, 1/2, 1/4, 3/8
    torch.testing.assert_close(cyc.rwse, torch.tensor([[0, .5, 0, .5]]).expand(4, 4))
    torch.testing.assert_close(tri.rwse, torch.tensor([[0, .5, .25, .375]]).expand(3, 4))
    # path of 3, sym. normalised Laplacian: eigenvector of eigenvalue 1 is (1, 0, -1)/sqrt(2); padded to 3
    v = path.lap_pe[:, 0]
    torch.testing.assert_close(v.abs(), torch.tensor([2 ** -0.5, 0, 2 ** -0.5]), atol=1e-5, rtol=0)
    assert float(v[0] * v[2]) < 0 and path.lap_pe.shape == (3, 3) and not path.lap_pe[:, 1:].any()


def test_tu_good_and_bad_graphs(tmp_path):
    ok = load_tu(write_tu_files(tmp_path / "ok", "X", two_triangles_and_path()))
    assert [g.num_nodes for g in ok.graphs] == [3, 3, 3] and not ok.failures
    assert [int(g.y) for g in ok.graphs] == [1, 0, 1]

    bad = two_triangles_and_path()
    bad["A"][6] = "4, 99"           # line 7: id outside 1..9 -> graph 2 fails
    bad["A"] += ["1, 1", "7, 8"]    # self-loop (dropped) and duplicate (merged): notes, not failures
    bad["node_attributes"] = ["0.5"] * 3 + ["1.0"] * 3 + ["1.0", "2.0, 3.0", "1.0"]  # line 8: wrong width
    loaded = load_tu(write_tu_files(tmp_path / "bad", "X", bad))
    assert [g.name for g in loaded.graphs] == ["1"]
    assert len(loaded.failures) == 2
    assert "graph 2" in loaded.failures[0] and "X_A.txt line 7" in loaded.failures[0] and "99" in loaded.failures[0]
    assert "graph 3" in loaded.failures[1] and "X_node_attributes.txt line 8" in loaded.failures[1]
    assert any("self-loop" in n for n in loaded.notes) and any("duplicate" in n for n in loaded.notes)
    assert loaded.graphs[0].edge_index.shape[1] == 6  # the self-loop is gone
    assert all("\n" not in line for line in loaded.failures)

    cross = two_triangles_and_path()
    cross["A"] += ["3, 4"]          # joins graphs 1 and 2
    cross["graph_indicator"] = ["1"] * 3 + ["2"] * 3 + ["4"] * 3   # graph 3 empty
    cross["graph_labels"] += ["1"]
    loaded = load_tu(write_tu_files(tmp_path / "cross", "X", cross))
    assert [g.name for g in loaded.graphs] == ["4"]
    assert any("joins graphs 1 and 2" in f for f in loaded.failures)
    assert any("graph 3: empty graph" in f for f in loaded.failures)

    short = two_triangles_and_path()
    short["graph_labels"] = ["1", "-1"]
    with pytest.raises(UserError, match="has 2 lines but .* names 3 graphs"):
        load_tu(write_tu_files(tmp_path / "short", "X", short))


def test_unseen_categories_map_to_row_zero(tmp_path):
    train = load_tu(write_tu_files(tmp_path / "a", "X", two_triangles_and_path()))
    other = two_triangles_and_path()
    other["node_labels"] = ["0", "1", "9"] * 3
    loaded = load_tu(write_tu_files(tmp_path / "b", "X", other), schema=train.schema)
    assert loaded.graphs[0].x_cat[:, 0].tolist() == [1, 2, 0]


def test_smiles_csv_bad_line_reported(tmp_path):
    p = tmp_path / "mols.csv"
    p.write_text("smiles,activity\nCCO,1.5\nnot_a_smiles,2\nc1ccccc1,0.5\n")
    loaded = load_smiles_csv(p)
    assert [g.name for g in loaded.graphs] == ["2", "4"]
    assert len(loaded.failures) == 1 and "line 3" in loaded.failures[0] and "invalid SMILES" in loaded.failures[0]
    assert loaded.graphs[0].y.tolist() == [[1.5]] and loaded.schema["num_targets"] == 1


def test_edgelist_node_level_and_bad_line(tmp_path):
    (tmp_path / "edges.csv").write_text("src,dst\n0,1\n1,2\n2,3\n3,0\n0,0\n")
    (tmp_path / "nodes.csv").write_text("node_id,f0,label\n0,1.0,0\n1,0.5,1\n2,0.1,0\n3,0.2,1\n")
    loaded = load_edgelist(tmp_path)
    g = loaded.graphs[0]
    assert loaded.schema["level"] == "node" and loaded.schema["classes"] == [0, 1]
    assert g.num_nodes == 4 and g.edge_index.shape[1] == 8 and g.x.shape == (4, 1)
    assert g.y.tolist() == [0, 1, 0, 1] and any("self-loop" in n for n in loaded.notes)

    d = tmp_path / "multi"
    d.mkdir()
    (d / "edges.csv").write_text("graph_id,src,dst\na,0,1\na,1,2\nb,0,1\nb,1,x\nc,0,5\n")
    (d / "graphs.csv").write_text("graph_id,label\na,1\nb,0\nc,1\n")
    loaded = load_edgelist(d)
    assert [g.name for g in loaded.graphs] == ["a", "c"]  # c: 6 nodes inferred from its ids
    assert any("line 5" in f and "graph b" in f for f in loaded.failures)


def test_torch_neighbor_loader_samples_real_edges():
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    from apps.graph.sampling import neighbor_loader

    gen = torch.Generator().manual_seed(0)
    n = 300
    ei = to_undirected(torch.randint(0, n, (2, 1500), generator=gen), num_nodes=n)
    data = Data(x=torch.arange(n).float().view(-1, 1), edge_index=ei, num_nodes=n)
    loader = neighbor_loader(data, [4, 2], input_nodes=torch.arange(50), batch_size=16, shuffle=True)
    edges = set(map(tuple, ei.t().tolist()))
    seen = 0
    for b in loader:
        assert (b.x[:, 0].long() == b.n_id).all()
        assert all(tuple(e) in edges for e in b.n_id[b.edge_index].t().tolist())
        indeg = torch.bincount(b.edge_index[1], minlength=b.num_nodes)[: b.batch_size]
        full = torch.bincount(ei[1], minlength=n)[b.n_id[: b.batch_size]]
        assert torch.equal(indeg, full.clamp(max=4))   # fan-out 4 at hop 1, all when fewer
        seen += int(b.batch_size)
    assert seen == 50
