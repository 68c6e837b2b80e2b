"""Config files plus command-line overrides, the same way in every ``ssm-<app>`` script.

Precedence, lowest first: the app's defaults, ``--config FILE`` (YAML or JSON),
explicit command-line flags, then ``--set key.sub=value`` pairs.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from .errors import UserError

_MAX_TIME = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2}):(\d{2})$")


def parse_max_time(value: Optional[str]) -> Optional[str]:
    """Validate Lightning's ``DD:HH:MM:SS`` duration; returns it unchanged (or None)."""
    if value is None:
        return None
    m = _MAX_TIME.match(str(value).strip())
    if not m or int(m.group(2)) > 23 or int(m.group(3)) > 59 or int(m.group(4)) > 59:
        raise UserError("--max-time", f"expected DD:HH:MM:SS (e.g. 00:01:30:00), got {value!r}")
    return str(value).strip()


def max_time_seconds(value: Optional[str]) -> Optional[float]:
    """``DD:HH:MM:SS`` -> seconds (None stays None)."""
    if value is None:
        return None
    d, h, m, s = (int(p) for p in parse_max_time(value).split(":"))
    return float(((d * 24 + h) * 60 + m) * 60 + s)


def load_config(path: Optional[str | Path]) -> Dict[str, Any]:
    """Read a YAML or JSON mapping; ``None`` gives ``{}``."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(p, "config file not found")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(p, f"cannot parse config: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(p, "config must be a mapping of keys to values")
    return data


def _set_dotted(cfg: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_set_pairs(pairs: Iterable[str]) -> Dict[str, Any]:
    """``["model.d_model=64", "lr=1e-3"]`` -> nested dict with YAML-typed values."""
    out: Dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise UserError("--set", f"expected key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _set_dotted(out, key.strip(), value)
    return out


def deep_update(base: Dict[str, Any], other: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursively merge ``other`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in other.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def merge_config(defaults: Mapping[str, Any], file_cfg: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 strict: bool = True) -> Dict[str, Any]:
    """defaults <- config file <- overrides (``None`` override values are ignored).

    With ``strict``, top-level keys of the file that the defaults do not know
    are an error, so a typo does not silently do nothing.
    """
    file_cfg = dict(file_cfg or {})
    if strict:
        unknown = sorted(set(file_cfg) - set(defaults))
        if unknown:
            raise UserError("config", f"unknown keys {unknown}; known: {sorted(defaults)}")
    cfg = deep_update(dict(defaults), file_cfg)
    return deep_update(cfg, {k: v for k, v in (overrides or {}).items() if v is not None})


# What make_trainer writes into a run directory.
RUN_OUTPUTS = ("checkpoints", "logs")


def prepare_run_dir(out: str | Path, overwrite: bool, clear: Iterable[str] = ()) -> Path:
    """Create ``out``; a non-empty existing one needs ``overwrite``.

    When reusing one, the previous run's outputs are removed first (the
    trainer's ``checkpoints/`` and ``logs/`` plus the app's own ``clear`` names),
    so a stale ``best.ckpt`` or metrics file is never mistaken for the new run's.

    Under DDP only rank 0 prepares the folder: the ranks Lightning relaunches find it already
    made (and must not clear it), so they only make sure it exists.
    """
    from .cli import is_rank_zero

    p = Path(out)
    if not is_rank_zero():
        p.mkdir(parents=True, exist_ok=True)
        return p
    if p.exists() and not p.is_dir():
        raise UserError(p, "exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise UserError(p, "run directory is not empty (pass --overwrite to reuse it)")
        for name in (*RUN_OUTPUTS, *clear):
            old = p / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
    p.mkdir(parents=True, exist_ok=True)
    return p
