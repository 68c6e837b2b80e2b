"""Build and load the C selective scan (core/ops/csrc/scan.c) with ctypes.

Plain C and the system compiler instead of torch.utils.cpp_extension: no torch
headers, so it compiles in about a second on a fresh machine. The shared object
is cached under ``$CORE_OPS_CACHE`` (default ``~/.cache/ssm-pipelines``), keyed
by the source, the flags and the CPU, and written atomically so parallel test
workers can race safely. If no compiler works, :func:`load` returns None and
the pure-torch path takes over.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

_SRC_DIR = Path(__file__).resolve().parent / "csrc"
# -ffast-math (finite-math included) is what lets gcc call glibc's vector expf (libmvec);
# the kernels never compare against inf/NaN, so the assumption is harmless.
_FLAGS = ["-O3", "-ffast-math", "-fPIC", "-shared", "-std=gnu99"]
_lock = threading.Lock()
_state = {"tried": False, "lib": None, "error": None}


def _cpu_tag() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    return platform.machine() + hashlib.sha1(flags.encode()).hexdigest()[:8]


def _compiler() -> Optional[str]:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _build(cache: Path) -> Path:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    srcs = sorted(_SRC_DIR.glob("*.[ch]"))
    h = hashlib.sha1()
    for s in srcs:
        h.update(s.read_bytes())
    arch = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
    flags = _FLAGS + arch
    h.update(" ".join([cc, *flags, _cpu_tag(), sys.platform]).encode())
    so = cache / f"scan_{h.hexdigest()[:16]}.so"
    if so.exists():
        return so
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    cmd = [cc, *flags, str(_SRC_DIR / "scan.c"), "-o", tmp, "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and arch:  # some compilers reject -march=native
        cmd.remove("-march=native")
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {_SRC_DIR / 'scan.c'} failed: {res.stderr.strip()[:500]}")
    os.replace(tmp, so)
    return so


def _declare(lib):
    i64, p = ctypes.c_int64, ctypes.c_void_p
    fwd = [i64] * 5 + [p] * 3 + [p, i64, i64, i64] * 2 + [p, p, p, p, i64, p, i64, i64]
    bwd = [i64] * 5 + [p] * 3 + [p, i64, i64, i64] * 2 + [p, i64] + [p] * 8 + [p, i64, i64]
    for sfx in ("f32", "f64"):
        getattr(lib, f"ss_fwd_{sfx}").argtypes = fwd
        getattr(lib, f"ss_bwd_{sfx}").argtypes = bwd
        getattr(lib, f"ss_fwd_{sfx}").restype = None
        getattr(lib, f"ss_bwd_{sfx}").restype = None
    return lib


def load():
    """The loaded library, or None when it cannot be built (reason in :func:`error`)."""
    if os.environ.get("CORE_OPS_NO_CEXT") == "1":
        return None
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            cache = Path(os.environ.get("CORE_OPS_CACHE",
                                        Path.home() / ".cache" / "ssm-pipelines"))
            try:
                _state["lib"] = _declare(ctypes.CDLL(str(_build(cache))))
            except Exception as exc:  # any failure means: use the torch path
                _state["error"] = f"{type(exc).__name__}: {exc}"
    return _state["lib"]


def error() -> Optional[str]:
    """Why :func:`load` returned None (None if it worked or was not tried)."""
    return _state["error"]
