"""Strict config keys: defaults < --config FILE < explicit flags < --set, where a key the
defaults do not have, at any depth, is one line naming it and its closest valid names."""
from __future__ import annotations

import difflib
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .config import deep_update, load_config, parse_set_pairs
from .errors import UserError

def _flatten_keys(schema: Mapping, prefix: str = "") -> List[str]:
    out = []
    for k, v in schema.items():
        out.append(prefix + str(k))
        if isinstance(v, Mapping):
            out += _flatten_keys(v, f"{prefix}{k}.")
    return out


def _unknown_key(source: str, dotted: str, siblings: Iterable[str], all_keys: List[str]) -> UserError:
    leaf = dotted.rsplit(".", 1)[-1]
    prefix = dotted[: len(dotted) - len(leaf)]
    close = [k for k in all_keys if k.rsplit(".", 1)[-1] == leaf]  # the right name at another level
    close += [prefix + s for s in difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.6)
              if prefix + s not in close]
    if not close:  # a close name at another level (lrr -> train.lr)
        leaves = {}
        for k in all_keys:
            leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
        for name in difflib.get_close_matches(leaf, list(leaves), n=3, cutoff=0.6):
            close += leaves[name]
    if not close:
        close = [k for k in difflib.get_close_matches(dotted, all_keys, n=3, cutoff=0.6)]
    hint = f"did you mean {', '.join(close[:3])}?" if close else \
        f"valid here: {', '.join(sorted(map(str, siblings))[:12]) or '(none)'}"
    return UserError(source, f"unknown config key '{dotted}'; {hint}")


def check_keys(cfg: Mapping, schema: Mapping, source: str = "config",
               extra_keys: Optional[Mapping[str, Union[Iterable[str], Callable[[], Iterable[str]]]]] = None,
               _prefix: str = "", _all: Optional[List[str]] = None) -> None:
    """Raise a one-line :class:`UserError` for the first key of ``cfg`` (at any depth) that
    ``schema`` (the defaults) does not have, naming its closest valid names.

    ``extra_keys`` maps a dotted section (``"model"``) to further valid names there (a list, or a
    function returning one, called only when needed: e.g. a network constructor's arguments).
    """
    extra_keys = extra_keys or {}
    all_keys = _all if _all is not None else _flatten_keys(schema)
    section = _prefix[:-1]
    extra_cache: Optional[List[str]] = None
    for k, v in cfg.items():
        dotted = f"{_prefix}{k}"
        if k not in schema:
            if extra_cache is None:
                extra = extra_keys.get(section, ())
                extra_cache = list(extra() if callable(extra) else extra)
            if k in extra_cache:
                continue
            raise _unknown_key(source, dotted, list(schema) + extra_cache, all_keys)
        sub = schema[k]
        if isinstance(sub, Mapping):
            if not isinstance(v, Mapping):
                raise UserError(source, f"config key '{dotted}' must be a mapping of keys to values, got {v!r}")
            check_keys(v, sub, source, extra_keys, dotted + ".", all_keys)


def _expand_dotted(flags: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in flags.items():
        if v is None:
            continue
        node = out
        parts = str(k).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(v, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = deep_update(node[parts[-1]], v)
        else:
            node[parts[-1]] = v
    return out


def resolve_config(defaults: Mapping[str, Any], config: Union[str, os.PathLike, Mapping, None] = None,
                   flags: Optional[Mapping[str, Any]] = None, set_pairs: Sequence[str] = (),
                   extra_keys: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """defaults < ``config`` (a YAML/JSON path or a mapping) < ``flags`` < ``set_pairs``, strictly.

    ``flags`` are the explicit command-line values (dotted keys allowed; ``None`` means not
    given). Every key from the file, the flags and ``--set`` must exist in ``defaults`` (or
    ``extra_keys``), else one line naming it and its closest valid names (exit 2).
    """
    file_cfg = dict(config) if isinstance(config, Mapping) else load_config(config)
    check_keys(file_cfg, defaults, str(config) if config is not None and not isinstance(config, Mapping)
               else "config", extra_keys)
    flag_cfg = _expand_dotted(flags or {})
    check_keys(flag_cfg, defaults, "flags", extra_keys)
    set_cfg = parse_set_pairs(set_pairs)
    check_keys(set_cfg, defaults, "--set", extra_keys)
    return deep_update(deep_update(deep_update(dict(defaults), file_cfg), flag_cfg), set_cfg)
