import json

import pandas as pd
import pytest

from apps.recsys.data import load_dataset


def test_train_writes_metrics_and_checkpoint(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(m[split]) == {f"{k}@{n}" for k in ("hit", "ndcg", "mrr") for n in (5, 10, 20)}
        assert 0 <= m[split]["ndcg@10"] <= m[split]["hit@10"] <= 1
    assert (tiny_run / "checkpoints" / "best.ckpt").is_file()


def test_evaluate(run_cli, tiny_run, synth, tmp_path):
    code, out, err = run_cli("evaluate", "--checkpoint", tiny_run, "--data", synth, "-o", tmp_path / "m.json")
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["ndcg@10"] == pytest.approx(json.loads((tiny_run / "metrics.json").read_text())["test"]["ndcg@10"])


def test_recommend_excludes_seen_and_speaks_raw_ids(run_cli, tiny_run, synth, tmp_path):
    d = load_dataset(synth)
    users = tmp_path / "users.txt"
    users.write_text("user_id\n" + "\n".join(d.user_ids[:4] + ["nobody"]) + "\n")
    out = tmp_path / "top.csv"
    code, _, err = run_cli("recommend", "--checkpoint", tiny_run, "--users", users, "--k", "5", "-o", out)
    assert code == 0, err
    assert "1 unknown user(s)" in err and "cold-start popular" in err
    df = pd.read_csv(out, dtype={"user": str, "item": str})
    assert list(df.columns) == ["user", "rank", "item", "score"] and len(df) == 20
    for u in d.user_ids[:4]:
        seen = {d.item_ids[i - 1] for i in d.history(d.user_ids.index(u))[0]}
        rec = df[df.user == u]
        assert not (set(rec.item) & seen) and list(rec["rank"]) == [1, 2, 3, 4, 5]
        assert rec.score.is_monotonic_decreasing
    # no overwrite without --overwrite; cold start served only on request
    code, _, err = run_cli("recommend", "--checkpoint", tiny_run, "--user", "nobody", "-o", out)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli("recommend", "--checkpoint", tiny_run, "--user", "nobody", "-o", tmp_path / "c.csv")
    assert code == 2 and not (tmp_path / "c.csv").exists()
    code, _, err = run_cli("recommend", "--checkpoint", tiny_run, "--user", "nobody", "--cold-start", "popular",
                           "-o", tmp_path / "c.csv")
    assert code == 0 and len(pd.read_csv(tmp_path / "c.csv")) == 10


def test_recommend_with_events_steps_the_state(run_cli, tiny_run, synth, tmp_path):
    d = load_dataset(synth)
    u, items = d.user_ids[0], d.item_ids
    last = float(d.history(0)[1][-1])
    ev = tmp_path / "ev.csv"
    pd.DataFrame({"user_id": [u, u, u], "item_id": [items[3], "unknown-item", items[5]],
                  "timestamp": [last + 60, last + 90, last + 4000]}).to_csv(ev, index=False)
    out = tmp_path / "after.csv"
    code, stdout, err = run_cli("recommend", "--checkpoint", tiny_run, "--user", u, "--events", ev, "-o", out)
    assert code == 0, err
    assert "1 events name items unknown" in err and "2 incremental updates" in stdout
    rec = set(pd.read_csv(out, dtype={"item": str}).item)
    assert not rec & {items[3], items[5]}


@pytest.mark.parametrize("case", ["missing", "garbage_ckpt", "bad_k", "bad_data"])
def test_bad_input_exit_2(run_cli, tiny_run, tmp_path, case):
    out = tmp_path / "o.csv"
    if case == "missing":
        args = ["train", "--data", tmp_path / "nope.inter", "--model", "sasrec", "--out", tmp_path / "r"]
    elif case == "garbage_ckpt":
        (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
        args = ["recommend", "--checkpoint", tmp_path / "x.ckpt", "--user", "1", "-o", out]
    elif case == "bad_k":
        args = ["recommend", "--checkpoint", tiny_run, "--user", "1", "--k", "0", "-o", out]
    else:
        (tmp_path / "bad.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnoon\n")
        args = ["train", "--data", tmp_path / "bad.inter", "--model", "sasrec", "--out", tmp_path / "r"]
    code, _, err = run_cli(*args)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "r").exists()


def test_cli_follows_the_contract():
    import subprocess
    import sys

    from apps.recsys.cli import build_cli
    from core.engine.cli import help_problems

    assert help_problems(build_cli().parser) == []
    code = "import sys, apps.recsys.cli; print(sorted(m for m in ('torch', 'lightning', 'pandas') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "[]", res.stderr[-500:]


def test_unknown_config_key_is_one_line(run_cli, synth, tmp_path):
    code, _, err = run_cli("train", "--data", synth, "-o", tmp_path / "r", "--set", "model.d_modle=8")
    assert code == 2 and "d_modle" in err and "d_model" in err and not (tmp_path / "r").exists()
