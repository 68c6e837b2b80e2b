"""The app contract, checked the same way for every ``ssm-<app>`` (core/engine/README.md).

A new app adds itself to ``APPS``: its cli module, the train verb's input flag and a function that
makes the smallest input the train verb accepts past its argument checks (a path that exists).
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.engine.cli import help_problems
from tests.conftest import cli_runner

ROOT = Path(__file__).resolve().parents[1]


def _csv(tmp: Path) -> Path:
    p = tmp / "series.csv"
    p.write_text("date,a,OT\n2024-01-01 00:00:00,1,2\n")
    return p


def _inter(tmp: Path) -> Path:
    p = tmp / "log.inter"
    p.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")
    return p


def _folder(tmp: Path) -> Path:
    p = tmp / "data"
    p.mkdir()
    return p


# app -> (cli module, train input flag, make a train input)
APPS = {
    "ecg": ("apps.ecg.cli", ["--data"], _folder),
    "medseg": ("apps.medseg.cli", ["--data"], _folder),
    "recsys": ("apps.recsys.cli", ["--data"], _inter),
    "asr": ("apps.asr.cli", ["--data"], _folder),
    "graph": ("apps.graph.cli", ["--data"], _folder),
    "timeseries": ("apps.timeseries.cli", ["--model", "dlinear", "--data"], _csv),
}


def _cli(app):
    return importlib.import_module(APPS[app][0]).build_cli()


def _run(app, argv, capsys):
    return cli_runner(_cli(app).main, capsys)(*argv)


@pytest.mark.parametrize("app", sorted(APPS))
def test_help_for_every_verb(app, capsys):
    cli = _cli(app)
    assert help_problems(cli.parser) == []
    sub = next(a for a in cli.parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb in ("train", "evaluate", "demo"):
        assert verb in sub.choices, verb
    for verb, p in sub.choices.items():
        text = p.format_help()
        assert "``" not in text and ":func:" not in text, (verb, text)
        opts = {o for a in p._actions for o in a.option_strings}
        if verb in ("train", "pretrain"):
            assert {"-o", "--out", "--config", "--set", "--seed", "--max-epochs", "--max-time", "--overwrite",
                    "--num-workers", "--accelerator", "--devices", "--strategy", "--num-nodes",
                    "--precision"} <= opts, verb
            assert "Config precedence" in " ".join(text.split())
            assert p.get_default("seed") == 0
        elif verb in ("evaluate", "predict") or ("--checkpoint" in opts and "-o" in opts):
            # (a verb that only prints, e.g. asr's stream, has no output flags)
            assert {"--checkpoint", "-o", "--out", "--device", "--overwrite"} <= opts, verb
        elif verb == "demo":
            assert {"-o", "--out", "--seed", "--overwrite"} <= opts


@pytest.mark.parametrize("app", sorted(APPS))
def test_unknown_set_key_exits_2_naming_it(app, tmp_path, capsys):
    _, flags, make = APPS[app]
    code, _, err = _run(app, ["train", *flags, make(tmp_path), "-o", tmp_path / "run", "--set", "lrr=0.1"], capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "unknown config key 'lrr'" in last and "did you mean" in last and "lr" in last
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("app", sorted(APPS))
def test_existing_output_needs_overwrite(app, tmp_path, capsys):
    _, flags, make = APPS[app]
    run = tmp_path / "run"
    run.mkdir()
    (run / "mine.txt").write_text("the user's")
    code, _, err = _run(app, ["train", *flags, make(tmp_path), "-o", run], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (run / "mine.txt").read_text() == "the user's"


@pytest.mark.parametrize("app", sorted(APPS))
def test_missing_input_exits_2_before_heavy_imports(app, tmp_path):
    _, flags, _ = APPS[app]
    verbs = [["train", *flags, tmp_path / "nope", "-o", tmp_path / "run"],
             ["evaluate", "--checkpoint", tmp_path / "nope.ckpt", "--data", tmp_path]]
    code = ("import sys\nfrom %s import main\n"
            "for argv in %r:\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 2, (argv, e.code)\n"
            "    else:\n        raise AssertionError(argv)\n"
            "heavy = [m for m in ('torch', 'lightning', 'monai') if m in sys.modules]\n"
            "assert not heavy, heavy\n") % (APPS[app][0], [[str(a) for a in v] for v in verbs])
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    took = time.time() - t0
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(l.startswith("error: ") and "nope" in l for l in lines), lines
    assert took < 10  # well under a second on an idle machine; this one is shared


@pytest.mark.parametrize("app", sorted(APPS))
def test_checkpoint_run_folder_without_checkpoints_is_one_line(app, tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    code, _, err = _run(app, ["evaluate", "--checkpoint", tmp_path / "run", "--data", tmp_path], capsys)
    assert code == 2 and "no checkpoints/best.ckpt or checkpoints/last.ckpt" in err


@pytest.mark.parametrize("app", sorted(APPS))
def test_one_seed_gives_identical_metrics_and_a_run_folder_is_a_checkpoint(app, tmp_path, capsys, monkeypatch):
    from tests.tiny_runs import metrics_of, recipe

    monkeypatch.setenv("SSM_NO_PROGRESS", "1")
    train, evaluate = recipe(app, tmp_path / "data")
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        code, _, err = _run(app, ["train", *train, "-o", run, "--seed", "3", "--max-epochs", "1",
                                  "--accelerator", "cpu"], capsys)
        assert code == 0, err
    first, second = (metrics_of(r) for r in runs)
    assert first and first == second
    # --checkpoint takes the trained run folder itself (its best checkpoint, else the last)
    code, _, err = _run(app, ["evaluate", "--checkpoint", runs[0], *evaluate, "-o", tmp_path / "m.json"], capsys)
    assert code == 0, err
    assert (tmp_path / "m.json").stat().st_size > 2


@pytest.mark.parametrize("app", sorted(APPS))
def test_demo_is_rerunnable_but_never_takes_a_users_folder(app, tmp_path, capsys, monkeypatch):
    """Every demo prepares its folder by one rule (core.engine.prepare_demo_dir) before any work: a
    folder an earlier demo made is emptied and reused, as the README's main command needs; any
    other non-empty folder is refused without --overwrite. (The work after it is each app's demo
    test; the whole README command runs in the demo job.)"""
    import core.engine.cli as kit

    mod = importlib.import_module(f"apps.{app}.demo")
    assert getattr(mod, "prepare_demo_dir", None) is kit.prepare_demo_dir, "demo must use prepare_demo_dir"

    def prepare_then_stop(out, overwrite=False):
        kit.prepare_demo_dir(out, overwrite)
        raise SystemExit(99)  # the folder rule is all this test is about

    monkeypatch.setattr(mod, "prepare_demo_dir", prepare_then_stop)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / kit.DEMO_MARKER).write_text("")
    (earlier / "stale_output.csv").write_text("from the last demo")
    code, _, err = _run(app, ["demo", "-o", earlier], capsys)
    assert code == 99, err
    assert not (earlier / "stale_output.csv").exists() and (earlier / kit.DEMO_MARKER).is_file()

    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("the user's")
    code, _, err = _run(app, ["demo", "-o", users], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (users / "notes.txt").read_text() == "the user's"


def test_no_constructor_swallows_unknown_keywords():
    """A misspelt model key must fail, not vanish into ``**_``/``**unused``."""
    import ast

    bad = []
    for path in [*ROOT.glob("apps/**/*.py"), *ROOT.glob("core/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__" and node.args.kwarg is not None:
                name = node.args.kwarg.arg
                used = any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))
                if name.startswith("_") or not used:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(**{name})")
    assert not bad, bad
