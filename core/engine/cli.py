"""The app contract: one command-line vocabulary for every ``ssm-<app>`` console script.

Importable without torch, so argument and path mistakes are reported in well under a second;
an app's ``cli.py`` builds its parser with :class:`AppCLI`, checks inputs, and only then imports
its heavy modules (torch, Lightning, MONAI) inside the command functions.

Verbs and their standard flags (``-o/--out`` has one meaning per verb)::

    train     --data, -o/--out RUN_FOLDER, --config, --set k.sub=v, --seed (0), --max-epochs,
              --max-time DD:HH:MM:SS, --overwrite, --num-workers,
              --accelerator --devices --strategy --num-nodes --precision
    evaluate  --checkpoint FILE|RUN_FOLDER, --data, -o/--out METRICS.json, --device, --num-workers, --overwrite
    predict   --checkpoint FILE|RUN_FOLDER, -i/--input, -o/--out OUTPUT (folder or file, said by the app),
              --device, --num-workers, --overwrite          (an app may name this verb, e.g. ``forecast``)
    demo      -o/--out FOLDER, --seed, --overwrite

API::

    cli = AppCLI("ssm-foo", "what foo does", examples="ssm-foo train --data d -o runs/a")
    t = cli.train(help="train a model"); t.add_argument("--lr", type=float, help="learning rate")
    cli.evaluate(help="metrics of a checkpoint"); cli.predict(help="outputs for new inputs")
    cli.demo(help="synthetic data end to end")
    deprecate(t, "--data-dir", "--data")            # old spelling: accepted, one notice on stderr
    args = cli.parse(argv)                          # argparse errors: usage line + exit 2
    cfg = resolve_config(DEFAULTS, args.config, {"lr": args.lr}, args.set_pairs)  # strict keys
    ckpt = resolve_checkpoint(args.checkpoint)      # a file, or a run folder's best (else last)
    require_paths(args.data, "--data")              # missing input -> one line, exit 2, fast
    failures = ItemFailures("case"); failures.fail(name, "not a NIfTI file"); return failures.finish(n, out)
    if is_rank_zero(): write outputs                # DDP: ranks > 0 never prepare folders or write
    require_extra("asr", ["soundfile"])             # optional third-party libraries of an app

Exit codes (:func:`core.engine.cli_main`): 0 all done; 2 bad input, including "some items
failed, the rest were written"; 1 an internal error (a bug; ``SSM_DEBUG=1`` shows the traceback).
Config precedence, lowest first: the app's defaults < ``--config FILE`` < explicit flags < ``--set``.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .config import deep_update, load_config, parse_max_time, parse_set_pairs
from .errors import EXIT_BAD_INPUT, EXIT_OK, UserError

PRECEDENCE = ("Config precedence, lowest first: the app's defaults < --config FILE < explicit flags "
              "< --set key.sub=value.")
MAX_TIME_HELP = ("wall-clock limit DD:HH:MM:SS for training (Lightning's max_time); the final scoring that "
                 "follows, one pass over the validation and test data, is not included")

# --------------------------------------------------------------------------------------------------
# Parser


class AppParser(argparse.ArgumentParser):
    """``ArgumentParser`` that checks 'required' options after parsing (so a deprecated alias of a
    required option satisfies it) and says what the error is in one usage line + exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self._kit_required: List[tuple] = []

    def add_required(self, *flags: str, **kwargs) -> argparse.Action:
        """``add_argument`` for an option that must be given (by it or a deprecated alias)."""
        action = self.add_argument(*flags, **kwargs)
        self._kit_required.append((action.dest, "/".join(flags)))
        return action

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        missing = [name for dest, name in self._kit_required if getattr(ns, dest, None) is None]
        if missing:
            self.error("the following arguments are required: " + ", ".join(missing))
        return ns, extra


class _Deprecated(argparse.Action):
    """An old spelling of an option: does what the new one does, plus a one-line notice."""

    def __init__(self, option_strings, dest, target: argparse.Action, new: str, **kwargs):
        self.target, self.new = target, new
        nargs = 0 if target.nargs == 0 else target.nargs
        super().__init__(option_strings, dest, nargs=nargs, const=target.const, type=target.type,
                         choices=target.choices, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        if isinstance(self.target, argparse._AppendAction):
            items = list(getattr(namespace, self.dest, None) or [])
            items.append(values)
            setattr(namespace, self.dest, items)
        elif self.target.nargs == 0:
            setattr(namespace, self.dest, self.target.const)
        else:
            setattr(namespace, self.dest, values)


def deprecate(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a spelling of the existing option ``new`` (hidden from --help); using it
    prints ``warning: OLD is deprecated; use NEW`` on stderr."""
    target = parser._option_string_actions.get(new)
    if target is None:
        raise ValueError(f"{new} is not an option of {parser.prog}")
    shown = "/".join(target.option_strings)
    parser.add_argument(old, dest=target.dest, action=_Deprecated, target=target, new=shown)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _max_time(text: str) -> str:
    try:
        return parse_max_time(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set key.sub=value`` (dest ``set_pairs``)."""
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON file of config values (unknown keys are an error)")
    p.add_argument("--set", dest="set_pairs", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, dotted keys for nested ones (model.d_model=64); repeatable")


def add_seed_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed; one seed gives the same run (default 0)")


def add_hardware_flags(p: argparse.ArgumentParser) -> None:
    """Lightning's hardware flags for training (dests: accelerator, devices, strategy, num_nodes, precision)."""
    h = p.add_argument_group("hardware (Lightning)")
    h.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: gpu if there is one)")
    h.add_argument("--devices", default="auto", help="number of devices per node, or auto")
    h.add_argument("--strategy", default="auto", help="auto, or ddp for several devices or nodes")
    h.add_argument("--num-nodes", type=int, default=1,
                   help="machines taking part (set MASTER_ADDR, MASTER_PORT, NODE_RANK on each; default 1)")
    h.add_argument("--precision", default="32-true", help="32-true (default), bf16-mixed or 16-mixed")


def add_workers_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-workers", type=_positive_int, default=0,
                   help="data-loading worker processes (default 0: load in this process)")


def add_overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")


def add_out_flag(p: AppParser, help: str, required: bool = True) -> None:
    """``-o/--out`` (dest ``out``)."""
    if required:
        p.add_required("-o", "--out", default=None, metavar="PATH", help=help + " (required)")
    else:
        p.add_argument("-o", "--out", default=None, metavar="PATH", help=help)


def add_train_flags(p: AppParser, out_help: str = "run folder: checkpoints/, logs/, metrics.json",
                    out_required: bool = True) -> None:
    """Every standard flag of a training verb (see the module docstring)."""
    add_out_flag(p, out_help, required=out_required)
    add_config_flags(p)
    add_seed_flag(p)
    p.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs")
    p.add_argument("--max-time", type=_max_time, default=None, metavar="DD:HH:MM:SS", help=MAX_TIME_HELP)
    add_overwrite_flag(p)
    add_workers_flag(p)
    add_hardware_flags(p)


def _device(text: str) -> str:
    t = text.strip().lower()
    if t in ("cpu", "cuda", "mps") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def add_inference_flags(p: AppParser, out_help: str, out_required: bool = True, workers: bool = True) -> None:
    """``--checkpoint``, ``-o/--out``, ``--device``, ``--num-workers`` (unless ``workers=False``), ``--overwrite``."""
    p.add_required("--checkpoint", default=None, metavar="CKPT",
                   help="checkpoint file, or a run folder (its best checkpoint, else the last) (required)")
    add_out_flag(p, out_help, required=out_required)
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    if workers:
        add_workers_flag(p)
    add_overwrite_flag(p)


def hardware_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """:func:`core.engine.make_trainer` keywords from :func:`add_hardware_flags` (``--devices 2`` -> 2)."""
    devices = args.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return dict(accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes, strategy=args.strategy,
                precision=args.precision)


def trainer_kwargs_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """:func:`hardware_kwargs` plus ``max_epochs`` and ``max_time`` of a training verb."""
    return dict(hardware_kwargs(args), max_epochs=args.max_epochs, max_time=parse_max_time(args.max_time))


class AppCLI:
    """One console script: a parser with standard verbs, and :meth:`main` with the exit-code rule.

    Each verb method returns the sub-parser (for app-specific flags); ``fn`` is the function
    called with the parsed ``args`` (it returns an exit code or None).
    """

    def __init__(self, prog: str, description: str, examples: str = "",
                 extra: Optional[Tuple[str, Sequence[str]]] = None):
        """``extra=(app, modules)``: the app's extra and its third-party import names, checked by
        :meth:`main` before anything else (a missing one is one line and exit 2, never a traceback)."""
        self.extra = extra
        epilog = (examples.rstrip() + "\n\n" if examples else "") + PRECEDENCE
        self.parser = AppParser(prog=prog, description=description, epilog=epilog)
        self._sub = self.parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                               parser_class=AppParser)

    def command(self, name: str, help: str, fn: Optional[Callable] = None, description: str = "",
                epilog: Optional[str] = None) -> AppParser:
        """A verb without standard flags (an app's own, e.g. ``pretrain``)."""
        p = self._sub.add_parser(name, help=help, description=description or help, epilog=epilog)
        p.set_defaults(fn=fn)
        return p

    def train(self, help: str, fn: Optional[Callable] = None, name: str = "train",
              out_help: str = "run folder: checkpoints/, logs/, metrics.json", out_required: bool = True) -> AppParser:
        """The training verb; ``out_required=False`` when another flag can name the run (``--resume``)."""
        p = self.command(name, help, fn, epilog=PRECEDENCE)
        add_train_flags(p, out_help, out_required)
        return p

    def evaluate(self, help: str, fn: Optional[Callable] = None, name: str = "evaluate",
                 out_help: str = "also write the metrics to this JSON file") -> AppParser:
        p = self.command(name, help, fn)
        add_inference_flags(p, out_help, out_required=False)
        return p

    def predict(self, help: str, fn: Optional[Callable] = None, name: str = "predict",
                out_help: str = "output folder", workers: bool = True) -> AppParser:
        p = self.command(name, help, fn)
        add_inference_flags(p, out_help, out_required=True, workers=workers)
        return p

    def demo(self, help: str, fn: Optional[Callable] = None) -> AppParser:
        p = self.command("demo", help, fn)
        add_out_flag(p, "output folder (re-running it replaces the demo's own outputs)")
        add_seed_flag(p)
        add_overwrite_flag(p)
        return p

    def parse(self, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
        return self.parser.parse_args(argv)

    def main(self, argv: Optional[Sequence[str]] = None) -> int:
        """Parse and call the verb's ``fn`` under :func:`core.engine.cli_main`'s exit-code rule."""
        from .errors import cli_main

        def run(cli, argv):
            if cli.extra:
                require_extra(*cli.extra)
            return _dispatch(cli, argv)

        return cli_main(run)(self, argv)


def _dispatch(cli: AppCLI, argv) -> Optional[int]:
    args = cli.parse(argv)
    if getattr(args, "fn", None) is None:
        raise RuntimeError(f"{cli.parser.prog} {args.command}: no function given for this verb")
    return args.fn(args)


def help_problems(parser: argparse.ArgumentParser) -> List[str]:
    """Options without a help text, or with RST markup, in a parser and its sub-parsers (for tests)."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                out += [f"{name} {x}" for x in help_problems(sub)]
            continue
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
            continue
        name = "/".join(a.option_strings) or a.dest
        if not a.help or not str(a.help).strip():
            out.append(f"{name}: no help text")
        elif "``" in str(a.help) or ":func:" in str(a.help):
            out.append(f"{name}: RST markup in help")
    return out


# --------------------------------------------------------------------------------------------------
# Config


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


# --------------------------------------------------------------------------------------------------
# Paths, checkpoints, outputs

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")


def resolve_checkpoint(path: Union[str, os.PathLike], flag: str = "--checkpoint") -> Path:
    """A checkpoint file as given, or a run folder's ``checkpoints/best.ckpt``, else ``last.ckpt``
    (the folder may also be the ``checkpoints/`` folder itself). One-line :class:`UserError` otherwise."""
    if path is None:
        raise UserError(flag, "no checkpoint given")
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for folder in (p / "checkpoints", p):
            for name in CHECKPOINT_NAMES:
                if (folder / name).is_file():
                    return folder / name
        raise UserError(p, "run folder has no checkpoints/best.ckpt or checkpoints/last.ckpt")
    raise UserError(p, "checkpoint not found")


def require_paths(paths: Union[None, str, os.PathLike, Iterable[Union[str, os.PathLike]]], flag: str,
                  kind: str = "any") -> List[Path]:
    """Each of ``paths`` must exist (``kind``: "any", "file" or "dir"); one line naming the first
    missing one otherwise. Call it before the heavy imports."""
    if paths is None:
        raise UserError(flag, "no path given")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(p, f"not found ({flag})")
        if kind == "file" and not p.is_file():
            raise UserError(p, f"is a folder; {flag} expects a file")
        if kind == "dir" and not p.is_dir():
            raise UserError(p, f"is not a folder ({flag} expects one)")
        out.append(p)
    return out


def check_new_output(path: Union[str, os.PathLike, None], overwrite: bool, folder: bool = False) -> Optional[Path]:
    """Refuse an output that would replace what the user has, unless ``overwrite``.

    A file must not exist; a folder (``folder=True``) may exist if empty. Returns the path.
    """
    if path is None:
        return None
    p = Path(path)
    if not is_rank_zero():  # a DDP rank Lightning relaunched: rank 0 checked (and made) it already
        return p
    if folder:
        if p.exists() and not p.is_dir():
            raise UserError(p, "exists and is not a folder")
        if p.is_dir() and any(p.iterdir()) and not overwrite:
            raise UserError(p, "folder is not empty (pass --overwrite to replace its outputs)")
    else:
        if p.is_dir():
            raise UserError(p, "is a folder; expected a file name")
        if p.exists() and not overwrite:
            raise UserError(p, "already exists (pass --overwrite to replace it)")
    return p


DEMO_MARKER = ".ssm-demo"


def prepare_demo_dir(out: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """The demo's folder, re-runnable as written: a folder an earlier demo made (it holds the
    ``.ssm-demo`` marker) is emptied and reused; any other non-empty folder needs ``overwrite``.
    Rank 0 only prepares it (see :func:`is_rank_zero`)."""
    import shutil

    p = Path(out)
    if not is_rank_zero():
        p.mkdir(parents=True, exist_ok=True)
        return p
    if p.exists() and not p.is_dir():
        raise UserError(p, "exists and is not a folder")
    if p.is_dir() and any(p.iterdir()):
        if not (p / DEMO_MARKER).is_file() and not overwrite:
            raise UserError(p, "folder is not empty and was not made by the demo (pass --overwrite to use it)")
        for child in p.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    p.mkdir(parents=True, exist_ok=True)
    (p / DEMO_MARKER).write_text("made by an ssm-pipelines demo; re-running the demo replaces this folder\n")
    return p


class OutputFolder:
    """``with OutputFolder(path):`` creates the folder if needed and removes it again on the way
    out if it created it and nothing was written into it (no empty folders left behind)."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        self._created = False

    def __enter__(self) -> Path:
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created = True
        return self.path

    def __exit__(self, *exc) -> bool:
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        return False


class ItemFailures:
    """Per-item failures of a batch command: one line per failed item, one summary line, exit 2.

    ``fail(item, problem)`` prints ``error: ITEM: PROBLEM`` on stderr at once (so logs show it
    where it happened) and counts it; ``finish(total, where)`` prints the summary and returns
    the exit code (0 if nothing failed, 2 otherwise).
    """

    def __init__(self, what: str = "item", stream=None):
        self.what = what
        self.stream = stream
        self.items: List[str] = []

    def fail(self, item: object, problem: Optional[str] = None) -> None:
        """Count and print one failure: ``fail(item, problem)``, or ``fail(line)`` for a ready line
        (a :class:`UserError` message already names its file)."""
        line = " ".join((str(item) if problem is None else f"{item}: {problem}").split())
        self.items.append(line)
        print(f"error: {line}", file=self.stream or sys.stderr, flush=True)

    def __len__(self) -> int:
        return len(self.items)

    def finish(self, total: int, where: Optional[object] = None) -> int:
        ok = total - len(self.items)
        dest = f" to {where}" if where is not None else ""
        plural = "" if total == 1 else "s"
        if not self.items:
            print(f"{total} {self.what}{plural} done{dest}", flush=True)
            return EXIT_OK
        print(f"{len(self.items)} of {total} {self.what}{plural} failed; the other {ok} written{dest}"
              if ok else f"all {total} {self.what}{plural} failed; nothing written", file=self.stream or sys.stderr,
              flush=True)
        return EXIT_BAD_INPUT


def describe_error(e: BaseException, what: str = "file") -> str:
    """An exception raised while reading a user's file, in the user's terms (no Python internals)."""
    import zlib

    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"{what} not found"
    if isinstance(e, PermissionError):
        return f"permission denied reading the {what}"
    if isinstance(e, IsADirectoryError):
        return f"expected a {what}, found a folder"
    if isinstance(e, (EOFError, zlib.error)):
        return f"{what} is truncated or corrupt"
    if isinstance(e, UnicodeDecodeError):
        return f"{what} is not text in the expected format"
    if isinstance(e, MemoryError):
        return f"{what} is too large to load into memory"
    return f"unreadable {what} (malformed or not in the expected format)"


# --------------------------------------------------------------------------------------------------
# Several processes (DDP)


def global_rank() -> int:
    """This process's rank in a multi-process (DDP) run, from the launcher's environment
    (torchrun's RANK; Lightning's NODE_RANK/LOCAL_RANK/WORLD_SIZE; SLURM_PROCID); 0 when alone.

    Readable before the Trainer exists, so a relaunched rank knows at argument-parsing time."""
    env = os.environ
    if env.get("RANK", "").isdigit():
        return int(env["RANK"])
    local = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "").isdigit() else 0
    node = int(env["NODE_RANK"]) if env.get("NODE_RANK", "").isdigit() else 0
    if node or "LOCAL_RANK" in env:
        per_node = int(env["LOCAL_WORLD_SIZE"]) if env.get("LOCAL_WORLD_SIZE", "").isdigit() else 1
        return node * max(per_node, local + 1) + local  # nonzero on every node but the first
    if env.get("SLURM_PROCID", "").isdigit() and env.get("SLURM_NTASKS", "1") != "1":
        return int(env["SLURM_PROCID"])
    return 0


def is_rank_zero() -> bool:
    """True in the process that prepares run folders and writes outputs (always, without DDP)."""
    return global_rank() == 0


def rank_zero_print(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if is_rank_zero():
        print(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# Optional dependencies and timing


def require_extra(app: str, modules: Iterable[str]) -> None:
    """Exit 2 with ``ssm-APP needs the APP extra: pip install "ssm-pipelines[APP]"`` when any of
    ``modules`` (third-party import names) is not installed. Does not import them."""
    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name.split(".")[0]) is not None
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            return False

    missing = [m for m in modules if not importable(m)]
    if missing:
        raise UserError(f'ssm-{app} needs the {app} extra: pip install "ssm-pipelines[{app}]" '
                        f"(missing: {', '.join(missing)})")


class Deadline:
    """Seconds left of a ``--max-time`` budget counted from the start of the command."""

    def __init__(self, max_time: Optional[str]):
        from .config import max_time_seconds

        self.start = time.monotonic()
        self.total = max_time_seconds(max_time)

    def left(self) -> Optional[float]:
        return None if self.total is None else max(0.0, self.total - (time.monotonic() - self.start))

    def as_max_time(self, reserve: float = 0.0) -> Optional[str]:
        """What is left (minus ``reserve`` seconds) as Lightning's ``DD:HH:MM:SS``."""
        left = self.left()
        if left is None:
            return None
        s = max(1, int(left - reserve))
        return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
