"""What every app needs once: trainer factory, checkpoints, config, atomic I/O, errors."""
from .config import (add_trainer_args, deep_update, load_config, max_time_seconds, merge_config,
                     parse_max_time, parse_set_pairs, prepare_run_dir, trainer_kwargs_from_args)
from .errors import EXIT_BAD_INPUT, UserError, cli_main
from .io import atomic_path, atomic_save, atomic_write, ensure_new, write_json
from .trainer import (best_or_last_checkpoint, budget_fraction, load_module, make_trainer, poly_lr_scheduler, progress,
                      seed_everything)

__all__ = [
    "add_trainer_args", "deep_update", "load_config", "max_time_seconds", "merge_config",
    "parse_max_time", "parse_set_pairs", "prepare_run_dir", "trainer_kwargs_from_args",
    "EXIT_BAD_INPUT", "UserError", "cli_main", "atomic_path", "atomic_save", "atomic_write",
    "ensure_new", "write_json", "best_or_last_checkpoint", "load_module", "make_trainer",
    "progress", "seed_everything", "budget_fraction", "poly_lr_scheduler",
]
