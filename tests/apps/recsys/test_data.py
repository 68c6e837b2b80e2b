import numpy as np
import pandas as pd
import pytest

from apps.recsys.data import (build_sequences, kcore, load_dataset, read_interactions, window_batch, windows,
                              write_udata)
from core.engine import UserError


def test_ml100k_protocol_counts(ml100k_df):
    df = ml100k_df
    assert len(df) == 100000 and df["user"].nunique() == 943 and df["item"].nunique() == 1682
    data = build_sequences(df, max_len=50, user_min=5, item_min=5)
    # RecBole ml-100k with [5,inf) user and item k-core: 943 users, 1349 items, 99287 interactions
    assert (data.n_users, data.n_items, len(data.items)) == (943, 1349, 99287)
    # leave-one-out over augmented prefixes: n-1 samples per user, last test, second-to-last validation
    assert len(data.samples("test")) == 943 and len(data.samples("val")) == 943
    assert len(data.samples("train")) == 99287 - 3 * 943
    # every user's sequence is time ordered
    for u in range(0, 943, 97):
        assert np.all(np.diff(data.history(u)[1]) >= 0)


def test_movielens_raw_formats_match_atomic(ml100k_df, tmp_path):
    df = ml100k_df
    sub = df.iloc[:3000]
    write_udata(sub, tmp_path / "u.data", "\t")
    write_udata(sub, tmp_path / "ratings.dat", "::")
    for name in ("u.data", "ratings.dat"):
        got, _ = read_interactions(tmp_path / name)
        pd.testing.assert_frame_equal(got, sub.reset_index(drop=True))
    csv = sub.rename(columns={"user": "uid", "item": "movie", "timestamp": "ts"})
    csv.to_csv(tmp_path / "log.csv", index=False)
    got, _ = read_interactions(tmp_path / "log.csv", user_col="uid", item_col="movie", time_col="ts")
    pd.testing.assert_frame_equal(got, sub.reset_index(drop=True))
    csv.to_parquet(tmp_path / "log.parquet")
    got, _ = read_interactions(tmp_path / "log.parquet", user_col="uid", item_col="movie", time_col="ts")
    pd.testing.assert_frame_equal(got, sub.reset_index(drop=True))


def test_kcore_iterates_until_stable():
    # item c has 1 user; dropping it leaves user 3 with 1 interaction, which must go in the next pass
    rows = [("1", "a", 1), ("1", "b", 2), ("2", "a", 1), ("2", "b", 2), ("3", "c", 1), ("3", "a", 2)]
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"]).astype({"timestamp": float})
    out = kcore(df, 2, 2)
    assert set(out["item"]) == {"a", "b"} and set(out["user"]) == {"1", "2"}


def test_ties_stable_and_gaps():
    df = pd.DataFrame({"user": ["u", "u", "u", "v", "u", "v"], "item": ["x", "y", "z", "x", "w", "y"],
                       "timestamp": [30.0, 10.0, 10.0, 5.0, 50.0, 7.0]})
    d = build_sequences(df, max_len=2, user_min=1, item_min=1)
    items, times = d.history(0)
    assert [d.item_ids[i - 1] for i in items] == ["y", "z", "x", "w"]  # y before z: file order on a tie
    assert d.gaps()[:4].tolist() == [0.0, 0.0, 20.0, 20.0]
    it, g, tgt = d.batch(np.array([[0, 3]]))  # target w, history cut to the last 2 items (z, x)
    assert [d.item_ids[i - 1] for i in it[0]] == ["z", "x"] and g[0].tolist() == [0.0, 20.0]
    assert d.item_ids[tgt[0] - 1] == "w"


def test_windows_cover_training_targets_once(synth):
    d = load_dataset(synth, max_len=7)
    items, gaps, tgt = window_batch(d, windows(d))
    prefix = d.samples("train")
    want = np.sort(d.items[d.offsets[prefix[:, 0]] + prefix[:, 1]])
    assert np.array_equal(np.sort(tgt[tgt > 0]), want)
    # each input is the item just before its target in the user's sequence
    rows = windows(d)
    for r in (0, 1, len(rows) - 1):
        u, hi = rows[r]
        lo = max(hi - 6, 1)
        seq = d.history(u)[0]
        n = hi - lo + 1
        assert tgt[r][:n].tolist() == seq[lo:hi + 1].tolist() and items[r][:n].tolist() == seq[lo - 1:hi].tolist()


@pytest.mark.parametrize("body,msg", [
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\n", "line 3"),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\tabc\n", "line 3: non-numeric timestamp"),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t\n", "line 2: missing timestamp"),
    ("user\titem\n1\t2\n", "line 1"),
])
def test_bad_files_name_the_line(tmp_path, body, msg):
    p = tmp_path / "bad.inter"
    p.write_text(body)
    with pytest.raises(UserError, match=msg):
        read_interactions(p)


def test_duplicates_and_unsorted_counted(tmp_path):
    p = tmp_path / "x.inter"
    p.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t2\t5\n1\t3\t1\n")
    _, rep = read_interactions(p)
    assert rep.duplicates == 1 and rep.unsorted_users == 1
