"""Build and load the C selective scan (core/ops/csrc/scan.c) with ctypes.

Plain C and the system compiler instead of torch.utils.cpp_extension: no torch
headers, so it compiles in about a second on a fresh machine. The shared object
is cached under ``$CORE_OPS_CACHE`` (default ``~/.cache/ssm-pipelines``; a
per-user temp folder when that cannot be written), keyed by the source, the
flags and the CPU, and written atomically so parallel test workers can race
safely. The compiler runs under a time limit (``$CORE_OPS_CC_TIMEOUT`` seconds,
default 120) and leaves no temporary file behind. If no compiler works,
:func:`load` returns None, warns once, and the pure-torch path takes over.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import List, Optional

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


def _cache_candidates() -> List[Path]:
    """Where the shared object may live: ``$CORE_OPS_CACHE`` (or ``~/.cache/ssm-pipelines``), then a
    per-user folder under the system temp folder (for a read-only home or a missing HOME)."""
    out: List[Path] = []
    try:
        env = os.environ.get("CORE_OPS_CACHE")
        out.append(Path(env).expanduser() if env else Path.home() / ".cache" / "ssm-pipelines")
    except Exception:  # no home directory at all
        pass
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    out.append(Path(tempfile.gettempdir()) / f"ssm-pipelines-{uid}")
    return out


def _timeout() -> float:
    return float(os.environ.get("CORE_OPS_CC_TIMEOUT", "120"))


def _run(cmd: List[str]) -> subprocess.CompletedProcess:
    """Run the compiler under a time limit; on timeout its whole process group is stopped
    (SIGTERM first, so gcc removes its own temporary files)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=_timeout())
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        raise RuntimeError(f"the C compiler ({cmd[0]}) did not finish within {_timeout():.0f} s "
                           f"(CORE_OPS_CC_TIMEOUT)") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _build(caches: List[Path]) -> Path:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc or clang, or set CC)")
    srcs = sorted(_SRC_DIR.glob("*.[ch]"))
    h = hashlib.sha1()
    for s in srcs:
        h.update(s.read_bytes())
    arch = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
    flags = _FLAGS + arch
    h.update(" ".join([cc, *flags, _cpu_tag(), sys.platform]).encode())
    name = f"scan_{h.hexdigest()[:16]}.so"
    for cache in caches:
        if (cache / name).is_file():
            return cache / name
    problems = []
    for cache in caches:
        try:  # a cache we cannot write to: try the next one
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".scan_", suffix=".so.tmp", dir=cache)
            os.close(fd)
        except OSError as e:
            problems.append(f"{cache}: {e.strerror or e}")
            continue
        try:
            cmd = [cc, *flags, str(_SRC_DIR / "scan.c"), "-o", tmp, "-lm"]
            res = _run(cmd)
            if res.returncode != 0 and arch:  # some compilers reject -march=native
                cmd.remove("-march=native")
                res = _run(cmd)
            if res.returncode != 0:
                raise RuntimeError(f"compiling {_SRC_DIR / 'scan.c'} failed: {res.stderr.strip()[:500]}")
            os.replace(tmp, cache / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return cache / name
    raise RuntimeError("no writable cache folder (" + "; ".join(problems) + ")")


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
    """The loaded library, or None when it cannot be built (reason in :func:`error`; one
    ``RuntimeWarning`` says so, once per process, unless ``CORE_OPS_NO_CEXT=1`` asked for it)."""
    if os.environ.get("CORE_OPS_NO_CEXT") == "1":
        _state["error"] = "disabled by CORE_OPS_NO_CEXT=1"
        return None
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:  # everything, the cache folder included, inside: any failure means the torch path
                _state["lib"] = _declare(ctypes.CDLL(str(_build(_cache_candidates()))))
            except Exception as exc:
                _state["error"] = f"{exc}" if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
                warnings.warn(f"core.ops: the C selective scan could not be built ({_state['error']}); "
                              "selective_scan and ssd_scan on CPU tensors fall back to the slower pure-torch "
                              "chunked scan (backend 'torch')", RuntimeWarning, stacklevel=2)
    return _state["lib"]


def error() -> Optional[str]:
    """Why :func:`load` returned None (None if it worked or was not tried)."""
    return _state["error"]
