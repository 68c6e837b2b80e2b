"""Packaging: `core` installs and imports alone, and a built wheel works outside the checkout."""
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Third-party libraries that belong to an app's extra, never to the base install.
APP_LIBRARIES = ("monai", "wfdb", "nibabel", "matplotlib", "pandas", "scipy", "sentencepiece", "soundfile",
                 "soxr", "librosa", "jiwer", "torch_geometric", "rdkit", "pyarrow", "sklearn", "tensorboard")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CORE_OPS_CACHE")}
    env.update(extra)
    return env


def test_core_imports_no_app_library():
    code = (
        "import importlib, pkgutil, sys\n"
        "import core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted({{n.split('.')[0] for n in sys.modules}} & set({APP_LIBRARIES!r} + ('apps',)))\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=_clean_env(PYTHONPATH=str(ROOT)), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "", f"importing core loaded: {res.stdout.strip()}"


def test_no_core_module_imports_apps():
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "apps"]
    assert not offenders, offenders


def test_version_has_one_source():
    import core
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'attr = "core.__version__"' in text
    assert f"## {core.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def _apps():
    return sorted(p.parent.name for p in (ROOT / "apps").glob("*/cli.py"))


def test_every_app_has_an_extra_and_a_console_script():
    import tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, scripts = meta["optional-dependencies"], meta["scripts"]
    for app in _apps():
        assert app in extras, f"no [{app}] extra"
        assert f"ssm-{app}" in scripts, f"no ssm-{app} console script"
        assert app in extras["all"][0], f"[all] misses {app}"
    assert set(meta["dependencies"]) & {f"{lib}" for lib in APP_LIBRARIES} == set()


@pytest.mark.parametrize("app", _apps())
def test_missing_extra_is_one_line_exit_2(app, tmp_path):
    # A stub that makes every app library unimportable, as on a base-only install.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {APP_LIBRARIES!r}:\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    res = subprocess.run([sys.executable, "-m", f"apps.{app}.cli", "--help"], cwd=ROOT, capture_output=True,
                         text=True, env=_clean_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"), timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and f'ssm-pipelines[{app}]' in lines[0], res.stderr


@pytest.mark.slow
def test_built_wheel_compiles_scan_in_fresh_venv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("core", "apps"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    wheels = tmp_path / "wheels"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(wheels), str(src)], capture_output=True, text=True, env=_clean_env(),
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = wheels.glob("ssm_pipelines-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "core/ops/csrc/scan.c" in names and "core/ops/csrc/scan_impl.h" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                          str(wheel)], capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    installed = site / "core"
    before = sorted(str(p) for p in installed.rglob("*") if "__pycache__" not in p.parts)
    for p in [installed, *installed.rglob("*")]:  # read-only package (binding for non-root users)
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        code = (
            "import sys, torch, core\n"
            f"assert core.__file__.startswith({str(site)!r}), core.__file__\n"
            "from core.ops import selective_scan, available_backends\n"
            "from core.ops import cpu_build\n"
            "assert 'cpu' in available_backends('selective_scan', 'cpu'), cpu_build.error()\n"
            "g = torch.Generator().manual_seed(0)\n"
            "u = torch.randn(2, 8, 64, generator=g); dt = torch.rand(2, 8, 64, generator=g)\n"
            "A = -torch.rand(8, 4, generator=g); B = torch.randn(2, 4, 64, generator=g)\n"
            "C = torch.randn(2, 4, 64, generator=g)\n"
            "y = selective_scan(u, dt, A, B, C, backend='cpu')\n"
            "r = selective_scan(u.double(), dt.double(), A.double(), B.double(), C.double(), backend='reference')\n"
            "torch.testing.assert_close(y.double(), r, rtol=1e-4, atol=1e-4)\n"
            "print('ok', core.__version__)\n"
        )
        home = tmp_path / "home"
        home.mkdir()
        res = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             env=_clean_env(HOME=str(home)), timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.startswith("ok")
        after = sorted(str(p) for p in installed.rglob("*") if "__pycache__" not in p.parts)
        assert after == before, "the first use wrote into site-packages"
        assert list((home / ".cache" / "ssm-pipelines").glob("scan_*.so")), "the scan was not compiled"
    finally:
        for p in [installed, *installed.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
