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

This module holds the parser and the verbs; strict config keys live in :mod:`core.engine.keys`, the
checks and outputs around a verb's work in :mod:`core.engine.runtime`; all are importable from here.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import parse_max_time
from .errors import UserError
# the rest of the kit, importable from here too (core.engine.cli is the contract's one name)
from .keys import check_keys, resolve_config  # noqa: F401
from .runtime import (CHECKPOINT_NAMES, DEMO_MARKER, Deadline, ItemFailures, OutputFolder,  # noqa: F401
                      check_new_output, describe_error, global_rank, is_rank_zero, prepare_demo_dir,
                      rank_zero_print, require_extra, require_paths, resolve_checkpoint)

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
