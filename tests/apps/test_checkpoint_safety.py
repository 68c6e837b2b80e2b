"""Every app's predict refuses a checkpoint that carries code: one line, exit 2, nothing executed."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    ck = {"state_dict": {"net.weight": torch.zeros(2, 2)}, "pytorch-lightning_version": "2.6.0",
          "hyper_parameters": {"config": {"model": _Payload(marker)}}}
    path = tmp_path / "model.ckpt"
    torch.save(ck, path)
    return path, marker


def _predict_argv(app, tmp_path, ckpt):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if app == "timeseries":
        csv = inputs / "series.csv"
        csv.write_text("date,a\n" + "".join(f"2020-01-01 {h:02d}:00:00,{h}\n" for h in range(24)))
        return ["forecast", "--checkpoint", str(ckpt), "-i", str(csv), "-o", str(tmp_path / "out.csv")]
    if app == "recsys":
        return ["recommend", "--checkpoint", str(ckpt), "--user", "1", "-o", str(tmp_path / "out.csv")]
    return ["predict", "--checkpoint", str(ckpt), "-i", str(inputs), "-o", str(tmp_path / "out")]


@pytest.mark.parametrize("app", ["ecg", "medseg", "timeseries", "recsys", "graph"])
def test_predict_refuses_a_checkpoint_carrying_code(app, tmp_path, capsys):
    ckpt, marker = _evil_checkpoint(tmp_path)
    main = importlib.import_module(f"apps.{app}.cli").main
    with pytest.raises(SystemExit) as e:
        main(_predict_argv(app, tmp_path, ckpt))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"refusing to load {ckpt}: it contains Python objects" in err[0], err
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.csv").exists()


def test_predict_process_exit_code(tmp_path):
    # the same through a real process: exit status 2, no traceback, the payload never ran
    ckpt, marker = _evil_checkpoint(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "apps.ecg.cli"] + _predict_argv("ecg", tmp_path, ckpt),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "refusing to load" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
