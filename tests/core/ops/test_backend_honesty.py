"""Dispatch says what it does: C-build failures warn once and hide "cpu", priorities decide "auto",
Triton is by-name only, and the C build survives a missing compiler, a hung one and an unwritable cache."""
import os
import stat
import tempfile
import types
import warnings

import pytest
import torch

from core.ops import available_backends, cpu_build, dispatch, register_backend, resolve_backend, selective_scan
from core.ops.reference import selective_scan_ref


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """cpu_build as if never tried, with its caches under tmp_path; the real state comes back after."""
    monkeypatch.setitem(cpu_build._state, "tried", False)
    monkeypatch.setitem(cpu_build._state, "lib", None)
    monkeypatch.setitem(cpu_build._state, "error", None)
    monkeypatch.setenv("CORE_OPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.delenv("CORE_OPS_NO_CEXT", raising=False)
    return tmp_path


def _fake_cc(tmp_path, body):
    cc = tmp_path / "fakecc"
    cc.write_text("#!/bin/sh\n" + body + "\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    return str(cc)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _small_scan():
    g = torch.Generator().manual_seed(0)
    u, dt = torch.randn(1, 3, 7, generator=g), torch.rand(1, 3, 7, generator=g)
    A, B, C = -torch.rand(3, 4, generator=g), torch.randn(1, 4, 7, generator=g), torch.randn(1, 4, 7, generator=g)
    return u, dt, A, B, C


def test_missing_compiler_warns_once_and_auto_takes_torch(fresh_build, monkeypatch):
    monkeypatch.setattr(cpu_build, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning) as rec:
        names = available_backends("selective_scan", "cpu")
        available_backends("ssd_scan", "cpu")
        out = selective_scan(*_small_scan())
    msgs = [str(w.message) for w in rec if "C selective scan" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "no C compiler found" in msgs[0] and "slower pure-torch" in msgs[0]
    assert "cpu" not in names and names[0] == "torch"
    assert resolve_backend("selective_scan", "auto", torch.zeros(1)) == "torch"
    assert resolve_backend("ssd_scan", "auto", torch.zeros(1)) == "torch"
    with pytest.raises(ValueError, match="no C compiler"):
        resolve_backend("selective_scan", "cpu", torch.zeros(1))
    torch.testing.assert_close(out, selective_scan_ref(*_small_scan()))
    assert cpu_build.error().startswith("no C compiler")


def test_no_cext_is_silent(fresh_build, monkeypatch):
    monkeypatch.setenv("CORE_OPS_NO_CEXT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "cpu" not in available_backends("selective_scan", "cpu")
    assert "CORE_OPS_NO_CEXT" in cpu_build.error()


def test_failing_compiler_leaves_no_temp_files(fresh_build, monkeypatch):
    # writes its output file, then fails: our temporary .so must be gone afterwards
    monkeypatch.setenv("CC", _fake_cc(fresh_build, 'while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done; '
                                                   'echo junk > "$out"; echo "fatal: broken" >&2; exit 1'))
    with pytest.warns(RuntimeWarning, match="failed: fatal: broken"):
        assert cpu_build.load() is None
    assert _files(fresh_build / "cache") == []


def test_compiler_time_limit(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", _fake_cc(fresh_build, "sleep 30"))
    monkeypatch.setenv("CORE_OPS_CC_TIMEOUT", "1")
    with pytest.warns(RuntimeWarning, match="did not finish within 1 s"):
        assert cpu_build.load() is None
    assert _files(fresh_build / "cache") == []


def test_unwritable_cache_falls_back_to_temp(fresh_build, monkeypatch):
    blocker = fresh_build / "not-a-folder"
    blocker.write_text("x")                                 # a file where the cache folder should be
    monkeypatch.setenv("CORE_OPS_CACHE", str(blocker / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = cpu_build.load()
    assert lib is not None, cpu_build.error()
    built = _files(fresh_build / "tmp")
    assert len(built) == 1 and built[0].endswith(".so") and built[0].startswith("ssm-pipelines-")


def test_no_home_is_handled(fresh_build, monkeypatch):
    from pathlib import Path

    monkeypatch.delenv("CORE_OPS_CACHE")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cpu_build.load() is not None, cpu_build.error()
    assert any(f.endswith(".so") for f in _files(fresh_build / "tmp"))


def test_priority_lets_a_registered_backend_win(monkeypatch):
    calls = []

    def mine(x, weight, bias=None, activation=None, initial_states=None):
        calls.append(1)
        return dispatch._conv_torch(x, weight, bias=bias, activation=activation, initial_states=initial_states)

    monkeypatch.setitem(dispatch._REGISTRY, "causal_conv1d", dict(dispatch._REGISTRY["causal_conv1d"]))
    register_backend("causal_conv1d", "mine", mine)                       # default priority: above torch
    names = available_backends("causal_conv1d", "cpu")
    assert names.index("mine") < names.index("torch") and names[0] == "cpu"
    register_backend("causal_conv1d", "mine", mine, priority=1000)
    assert available_backends("causal_conv1d", "cpu")[0] == "mine"
    assert resolve_backend("causal_conv1d", "auto", torch.zeros(1)) == "mine"
    register_backend("causal_conv1d", "mine", mine, priority=1000, auto=False)
    assert resolve_backend("causal_conv1d", "auto", torch.zeros(1)) == "cpu"
    register_backend("causal_conv1d", "mine", mine, priority=1000, why_unavailable=lambda: "needs a TPU")
    assert "mine" not in available_backends("causal_conv1d")
    with pytest.raises(ValueError, match="needs a TPU"):
        resolve_backend("causal_conv1d", "mine", torch.zeros(1))


def test_triton_is_never_auto_on_cuda():
    # a stand-in for a CUDA tensor: every can_run predicate here only looks at the device
    fake = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    for op in ("selective_scan", "ssd_scan", "causal_conv1d"):
        want = "mamba_ssm" if "mamba_ssm" in available_backends(op) else "torch"
        if op == "causal_conv1d" and "causal_conv1d" in available_backends(op):
            want = "causal_conv1d"
        assert resolve_backend(op, "auto", fake) == want
        entry = dispatch._REGISTRY[op].get("triton")
        if entry is not None:
            assert entry[3] is False and entry[2] < dispatch._REGISTRY[op]["torch"][2]


def test_available_backends_without_compiler_in_a_fresh_process(tmp_path):
    # end to end: no compiler on PATH, a fresh interpreter, the real warning text on stderr
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, CC=str(tmp_path / "missing-cc"), PATH=str(tmp_path), CORE_OPS_CACHE=str(tmp_path / "c"),
               PYTHONPATH=str(root))
    env.pop("CORE_OPS_NO_CEXT", None)
    code = ("import warnings; warnings.simplefilter('default')\n"
            "from core.ops import available_backends as a\n"
            "print(a('selective_scan', 'cpu')); print(a('ssd_scan', 'cpu'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["['torch', 'reference']"] * 2
    assert r.stderr.count("RuntimeWarning: core.ops: the C selective scan could not be built") == 1
