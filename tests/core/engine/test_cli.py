"""The CLI kit (app contract) in core.engine.cli: parser, strict config, checkpoints, exit codes, ranks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.engine import (AppCLI, Deadline, ItemFailures, OutputFolder, UserError, check_new_output, cli_main,
                         deprecate, describe_error, global_rank, is_rank_zero, prepare_run_dir, require_extra,
                         require_paths, resolve_checkpoint, resolve_config)
from core.engine.cli import PRECEDENCE, help_problems

ROOT = Path(__file__).resolve().parents[3]


def _cli(calls=None):
    calls = calls if calls is not None else []
    cli = AppCLI("ssm-toy", "a toy app", examples="ssm-toy train --data d -o runs/a")
    t = cli.train(help="train the toy", fn=lambda a: calls.append(("train", a)) or 0)
    t.add_argument("--data", default=None, help="input folder")
    t.add_argument("--lr", type=float, default=None, help="learning rate")
    deprecate(t, "--data-dir", "--data")
    deprecate(t, "--output", "--out")
    e = cli.evaluate(help="score a checkpoint", fn=lambda a: calls.append(("evaluate", a)) or 2)
    e.add_argument("--data", default=None, help="labelled data")
    p = cli.predict(help="forecast", name="forecast", fn=lambda a: calls.append(("forecast", a)))
    p.add_argument("-i", "--input", nargs="+", default=None, help="inputs")
    deprecate(p, "--output", "--out")
    cli.demo(help="end to end on synthetic data", fn=lambda a: 0)
    return cli, calls


def test_import_does_not_load_torch():
    code = ("import sys, core.engine, core.engine.cli; from core.engine import resolve_config, AppCLI; "
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_standard_flags_defaults_and_help(capsys):
    cli, _ = _cli()
    a = cli.parse(["train", "-o", "run", "--data", "d"])
    assert (a.out, a.seed, a.max_epochs, a.max_time, a.overwrite, a.num_workers) == ("run", 0, None, None, False, 0)
    assert (a.accelerator, a.devices, a.strategy, a.num_nodes, a.precision) == ("auto", "auto", "auto", 1, "32-true")
    assert a.set_pairs == [] and a.config is None
    a = cli.parse(["forecast", "--checkpoint", "c.ckpt", "-i", "x.csv", "--out", "f.csv", "--device", "cuda"])
    assert (a.checkpoint, a.input, a.out, a.device) == ("c.ckpt", ["x.csv"], "f.csv", "cuda")
    assert help_problems(cli.parser) == []
    for verb in ("train", "evaluate", "forecast", "demo"):
        with pytest.raises(SystemExit) as ex:
            cli.parse([verb, "--help"])
        assert ex.value.code == 0
        text = capsys.readouterr().out
        assert ("Config precedence" in " ".join(text.split())) == (verb == "train")
    with pytest.raises(SystemExit):
        cli.parse(["--help"])
    assert " ".join(PRECEDENCE.split()) in " ".join(capsys.readouterr().out.split())


def test_help_problems_finds_missing_help():
    cli = AppCLI("x", "x")
    cli.command("go", "go").add_argument("--flag")
    assert help_problems(cli.parser) == ["go --flag: no help text"]


def test_required_and_bad_values_exit_2(capsys):
    cli, _ = _cli()
    for argv in (["train", "--data", "d"], ["forecast", "-i", "x", "-o", "y"],
                 ["train", "-o", "r", "--max-time", "90 minutes"], ["train", "-o", "r", "--num-workers", "-1"]):
        with pytest.raises(SystemExit) as ex:
            cli.parse(argv)
        assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "required: -o/--out" in err and "required: --checkpoint" in err and "DD:HH:MM:SS" in err


def test_deprecated_spellings_work_with_one_notice(capsys):
    cli, _ = _cli()
    a = cli.parse(["train", "--output", "run", "--data-dir", "d"])  # satisfies the required -o/--out
    assert (a.out, a.data) == ("run", "d")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --output is deprecated; use -o/--out", "warning: --data-dir is deprecated; use --data"]
    a = cli.parse(["forecast", "--checkpoint", "c", "-i", "x", "--output", "f.csv"])
    assert a.out == "f.csv"
    # hidden from --help
    assert "--data-dir" not in cli.parser._subparsers._group_actions[0].choices["train"].format_help()


DEFAULTS = {"lr": 1e-3, "epochs": 3, "model": {"d_model": 64, "n_layer": 2, "opts": {"dropout": 0.1}},
            "data": {"fs": 500.0}}


def test_resolve_config_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nepochs: 5\nmodel:\n  d_model: 32\n")
    cfg = resolve_config(DEFAULTS, f, {"epochs": 7, "lr": None, "model.n_layer": 4}, ["model.d_model=16"])
    assert cfg == {"lr": 0.01, "epochs": 7, "model": {"d_model": 16, "n_layer": 4, "opts": {"dropout": 0.1}},
                   "data": {"fs": 500.0}}
    assert resolve_config(DEFAULTS) == DEFAULTS and resolve_config(DEFAULTS) is not DEFAULTS
    assert resolve_config(DEFAULTS, set_pairs=["lr=5e-4"])["lr"] == 5e-4


def test_unknown_keys_name_the_key_and_closest_names(tmp_path):
    with pytest.raises(UserError) as e:
        resolve_config(DEFAULTS, set_pairs=["model.d_modle=64"])
    assert str(e.value) == "--set: unknown config key 'model.d_modle'; did you mean model.d_model?"
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"opts": {"dropuot": 0.2}}}))
    with pytest.raises(UserError, match=r"c.json: unknown config key 'model.opts.dropuot'; did you mean "
                                        r"model.opts.dropout\?"):
        resolve_config(DEFAULTS, f)
    with pytest.raises(UserError, match="did you mean model.d_model"):  # right name, wrong level
        resolve_config(DEFAULTS, set_pairs=["d_model=8"])
    with pytest.raises(UserError, match="valid here: data, epochs, lr, model"):
        resolve_config(DEFAULTS, set_pairs=["zzz=1"])
    with pytest.raises(UserError, match="'model' must be a mapping"):
        resolve_config(DEFAULTS, set_pairs=["model=3"])
    # extra names a section accepts (e.g. a constructor's arguments), computed only when needed
    asked = []
    extra = {"model": lambda: asked.append(1) or ["expand", "d_state"]}
    assert resolve_config(DEFAULTS, set_pairs=["model.expand=4"], extra_keys=extra)["model"]["expand"] == 4
    assert resolve_config(DEFAULTS, set_pairs=["model.n_layer=1"], extra_keys={"model": lambda: 1 / 0})
    with pytest.raises(UserError, match="did you mean model.expand"):
        resolve_config(DEFAULTS, set_pairs=["model.expnd=4"], extra_keys=extra)


def test_unknown_set_key_exits_2_in_one_line(tmp_path):
    code = ("from core.engine import cli_main, resolve_config\n"
            "cli_main(lambda: resolve_config({'model': {'d_model': 1}}, set_pairs=['model.d_modle=64']))()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --set: unknown config key 'model.d_modle'; did you mean "
                                             "model.d_model?"]


def test_resolve_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "nope.ckpt")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no checkpoints/best.ckpt"):
        resolve_checkpoint(run)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert resolve_checkpoint(run) == run / "checkpoints" / "best.ckpt"
    assert resolve_checkpoint(run / "checkpoints") == run / "checkpoints" / "best.ckpt"
    assert resolve_checkpoint(run / "checkpoints" / "last.ckpt") == run / "checkpoints" / "last.ckpt"


def test_paths_and_outputs(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    assert require_paths(tmp_path / "a.csv", "--data", kind="file") == [tmp_path / "a.csv"]
    with pytest.raises(UserError, match=r"missing: not found \(-i/--input\)"):
        require_paths([tmp_path / "a.csv", tmp_path / "missing"], "-i/--input")
    with pytest.raises(UserError, match="expects a file"):
        require_paths(tmp_path, "--data", kind="file")
    with pytest.raises(UserError, match="--overwrite"):
        check_new_output(tmp_path / "a.csv", overwrite=False)
    assert check_new_output(tmp_path / "a.csv", overwrite=True) == tmp_path / "a.csv"
    with pytest.raises(UserError, match="not empty"):
        check_new_output(tmp_path, overwrite=False, folder=True)
    assert check_new_output(tmp_path / "new", overwrite=False, folder=True) == tmp_path / "new"
    with OutputFolder(tmp_path / "empty") as d:
        assert d.is_dir()
    assert not (tmp_path / "empty").exists()
    with OutputFolder(tmp_path / "full") as d:
        (d / "x").write_text("1")
    assert (tmp_path / "full" / "x").exists()
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "failed"):
            raise RuntimeError("boom")
    assert not (tmp_path / "failed").exists()


def test_item_failures(capsys):
    f = ItemFailures("record")
    assert f.finish(3, "out/") == 0
    assert capsys.readouterr().out.strip() == "3 records done to out/"
    f.fail("rec2", "missing .mat\nfile")
    f.fail("rec5", "no signal")
    assert len(f) == 2 and f.finish(5, "out/") == 2
    cap = capsys.readouterr()
    assert cap.err.strip().splitlines() == ["error: rec2: missing .mat file", "error: rec5: no signal",
                                            "2 of 5 records failed; the other 3 written to out/"]
    assert describe_error(IndexError("list index out of range"), "WFDB header") == \
        "unreadable WFDB header (malformed or not in the expected format)"
    assert describe_error(EOFError(), "NIfTI file") == "NIfTI file is truncated or corrupt"


def test_exit_codes(capsys):
    cli, calls = _cli()
    assert cli.main(["train", "-o", "r"]) == 0 and calls[-1][0] == "train"
    with pytest.raises(SystemExit) as ex:  # the verb's own code: 2 = some items failed
        cli.main(["evaluate", "--checkpoint", "c"])
    assert ex.value.code == 2

    @cli_main
    def buggy():
        return [][1]

    with pytest.raises(SystemExit) as ex:
        buggy()
    assert ex.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("internal error: IndexError") and "SSM_DEBUG=1" in err[0]


def test_require_extra():
    require_extra("toy", ["json", "os.path"])
    with pytest.raises(UserError) as e:
        require_extra("asr", ["json", "surely_not_installed_mod"])
    assert str(e.value).startswith('ssm-asr needs the asr extra: pip install "ssm-pipelines[asr]"')


def test_rank_zero_only_prepares_run_folder(tmp_path, monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert global_rank() == 0 and is_rank_zero()
    run = tmp_path / "run"
    prepare_run_dir(run, overwrite=False)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_text("rank 0's")
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's launcher gives the relaunched rank 1
    assert not is_rank_zero()
    assert prepare_run_dir(run, overwrite=False) == run  # no "not empty" error
    prepare_run_dir(run, overwrite=True)  # and never clears rank 0's files
    assert (run / "checkpoints" / "last.ckpt").read_text() == "rank 0's"
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # first process of the second machine
    assert global_rank() > 0
    monkeypatch.setenv("RANK", "0")
    assert is_rank_zero()


def test_deadline():
    assert Deadline(None).left() is None and Deadline(None).as_max_time() is None
    d = Deadline("00:01:00:00")
    assert 3590 < d.left() <= 3600
    assert d.as_max_time(reserve=600) in ("00:00:50:00", "00:00:49:59")
