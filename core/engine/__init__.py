"""What every app needs once: the CLI kit (app contract), trainer factory, checkpoints, config,
atomic I/O, errors, optimisers.

Importing this package (or :mod:`core.engine.cli`) does not import torch or Lightning: the
trainer helpers load on first use, so a console script reports bad arguments in well under a second.
"""
from .cli import (AppCLI, AppParser, Deadline, ItemFailures, OutputFolder, check_keys, check_new_output,
                  deprecate, describe_error, global_rank, hardware_kwargs, is_rank_zero, prepare_demo_dir,
                  rank_zero_print, require_extra, require_paths, resolve_checkpoint, resolve_config,
                  trainer_kwargs_from_args)
from .checkpoint import UnsafeCheckpointError, safe_globals, safe_load
from .config import (deep_update, load_config, max_time_seconds, merge_config, parse_max_time, parse_set_pairs,
                     prepare_run_dir)
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, UserError, cli_main
from .io import atomic_path, atomic_save, atomic_write, ensure_new, write_json

# torch/Lightning-backed names, imported on first access (PEP 562)
_LAZY = {name: ".trainer" for name in ("best_or_last_checkpoint", "load_module", "make_trainer", "progress",
                                       "resolve_device", "seed_everything")}
_LAZY.update({name: ".optim" for name in ("budget_fraction", "configure_optimizers", "make_optimizer",
                                          "no_weight_decay_names", "param_groups", "poly_lr_scheduler",
                                          "step_decay_scheduler", "warmup_cosine_scheduler")})


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AppCLI", "AppParser", "Deadline", "ItemFailures", "OutputFolder", "check_keys", "check_new_output",
    "deprecate", "describe_error", "global_rank", "hardware_kwargs", "is_rank_zero", "prepare_demo_dir",
    "rank_zero_print", "require_extra",
    "require_paths", "resolve_checkpoint", "resolve_config",
    "deep_update", "load_config", "max_time_seconds", "merge_config",
    "parse_max_time", "parse_set_pairs", "prepare_run_dir", "trainer_kwargs_from_args",
    "EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_OK", "UserError", "cli_main", "atomic_path", "atomic_save",
    "atomic_write", "ensure_new", "write_json", "best_or_last_checkpoint", "load_module", "make_trainer",
    "progress", "resolve_device", "seed_everything", "budget_fraction", "poly_lr_scheduler",
    "configure_optimizers", "make_optimizer", "no_weight_decay_names", "param_groups", "step_decay_scheduler",
    "warmup_cosine_scheduler", "UnsafeCheckpointError", "safe_globals", "safe_load",
]
