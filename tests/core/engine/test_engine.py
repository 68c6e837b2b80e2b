import json

import lightning
import pytest
import torch

from core.engine import (AppCLI, UserError, atomic_write, best_or_last_checkpoint, cli_main,
                         ensure_new, load_config, load_module, make_trainer, max_time_seconds,
                         merge_config, parse_max_time, parse_set_pairs, prepare_run_dir,
                         seed_everything, trainer_kwargs_from_args, write_json)


def test_user_error_is_one_line():
    e = UserError("a/b.nii.gz", "not a NIfTI file\n  (bad magic)")
    assert str(e) == "a/b.nii.gz: not a NIfTI file (bad magic)"


def test_cli_main_exit_code_and_message(capsys):
    @cli_main
    def main():
        raise UserError("rec1.hea", "missing .mat file")

    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: rec1.hea: missing .mat file"

    @cli_main
    def ok():
        return 0

    assert ok() == 0


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as f:
        f.write("whole")
    assert target.read_text() == "whole"
    with pytest.raises(UserError, match="--overwrite"):
        with atomic_write(target) as f:
            f.write("again")
    assert target.read_text() == "whole"
    with atomic_write(target, overwrite=True) as f:
        f.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_ensure_new_and_run_dir(tmp_path):
    (tmp_path / "x").write_text("1")
    with pytest.raises(UserError):
        ensure_new([tmp_path / "y", tmp_path / "x"])
    ensure_new(tmp_path / "x", overwrite=True)
    with pytest.raises(UserError, match="not empty"):
        prepare_run_dir(tmp_path, overwrite=False)
    assert prepare_run_dir(tmp_path / "new", overwrite=False).is_dir()
    # reusing a run dir removes the previous run's outputs, nothing else
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_text("old")
    (run / "logs").mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    prepare_run_dir(run, overwrite=True, clear=("metrics.json",))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_max_time():
    assert parse_max_time("00:00:10:00") == "00:00:10:00"
    assert max_time_seconds("01:02:03:04") == ((24 + 2) * 60 + 3) * 60 + 4
    for bad in ("10:00", "00:25:00:00", "aa:bb:cc:dd", "00:00:61:00"):
        with pytest.raises(UserError):
            parse_max_time(bad)


def test_config_precedence(tmp_path):
    defaults = {"lr": 1e-3, "model": {"d_model": 32, "n_layer": 2}, "batch_size": 8}
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nmodel:\n  d_model: 64\n")
    cfg = merge_config(defaults, load_config(f), {"batch_size": 4, "lr": None})
    cfg = merge_config(cfg, {}, parse_set_pairs(["model.n_layer=6", "lr=5e-4"]))
    assert cfg == {"lr": 5e-4, "model": {"d_model": 64, "n_layer": 6}, "batch_size": 4}
    bad = tmp_path / "bad.yaml"
    bad.write_text("lrr: 1\n")
    with pytest.raises(UserError, match="unknown keys"):
        merge_config(defaults, load_config(bad))
    j = tmp_path / "c.json"
    j.write_text("[1, 2]")
    with pytest.raises(UserError, match="mapping"):
        load_config(j)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_trainer_args_roundtrip():
    cli = AppCLI("ssm-x", "x")
    cli.train("train")
    a = cli.parse(["train", "--out", "r", "--max-epochs", "3", "--devices", "2", "--max-time", "00:00:01:00"])
    kw = trainer_kwargs_from_args(a)
    assert kw["max_epochs"] == 3 and kw["devices"] == 2 and kw["max_time"] == "00:00:01:00"


class _Tiny(lightning.LightningModule):
    def __init__(self, width: int = 4, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(width, 1)

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_trainer_checkpoint_carries_config(tmp_path):
    seed_everything(0)
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = _Tiny(width=3, lr=0.05)
    trainer = make_trainer(tmp_path / "run", max_epochs=3, monitor="val_loss", progress=False)
    trainer.fit(model, dl, dl)
    ckpt = best_or_last_checkpoint(tmp_path / "run")
    assert ckpt.name == "best.ckpt"
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()
    loaded = load_module(ckpt, _Tiny)
    assert loaded.hparams.width == 3 and loaded.hparams.lr == 0.05
    torch.testing.assert_close(loaded.net.weight, model.net.weight.detach().cpu())
    # a second run in the same folder replaces best.ckpt (no stale best + best-v1.ckpt)
    model2 = _Tiny(width=3, lr=0.01)
    make_trainer(tmp_path / "run", max_epochs=1, monitor="val_loss", progress=False).fit(model2, dl, dl)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_module(best_or_last_checkpoint(tmp_path / "run"), _Tiny).hparams.lr == 0.01
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.ckpt"):
        load_module(bad, _Tiny)


def test_write_json(tmp_path):
    import numpy as np

    write_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": np.arange(2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 0.5, "b": [0, 1]}


class _PolyTiny(_Tiny):
    def __init__(self):
        super().__init__(width=3, lr=0.1)
        self.lrs = []

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs.append(self.optimizers().param_groups[0]["lr"])

    def configure_optimizers(self):
        from core.engine import poly_lr_scheduler

        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": poly_lr_scheduler(opt, self, steps_per_epoch=4)}


def test_poly_schedule_decays_over_the_epoch_budget(tmp_path):
    x = torch.randn(64, 3)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    model = _PolyTiny()
    make_trainer(tmp_path / "run", max_epochs=3, progress=False, loggers=()).fit(model, dl)
    expect = [0.1 * (1 - k / 12) ** 0.9 for k in range(12)]       # 3 epochs x 4 steps
    assert model.lrs == pytest.approx(expect, rel=1e-6)


def test_budget_fraction_follows_max_time(tmp_path):
    from core.engine import budget_fraction

    seen = []

    class _Clock(_Tiny):
        def on_train_batch_start(self, batch, batch_idx):
            seen.append(budget_fraction(self.trainer))

    x = torch.randn(32, 3)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    make_trainer(tmp_path / "run", max_time="00:00:00:30", max_epochs=2, progress=False, loggers=()).fit(
        _Clock(width=3), dl)
    # max_epochs is unknown in steps here (no steps_per_epoch), so only the clock counts: tiny, rising
    assert len(seen) == 4 and 0.0 <= seen[0] <= seen[-1] < 0.5
