"""Checkpoints are read with weights_only=True: a crafted one is refused and never executed."""
import os
import pathlib
import pickle

import lightning
import numpy as np
import pytest
import torch

from core.engine import UnsafeCheckpointError, UserError, load_module, make_trainer, safe_load
from core.engine.checkpoint import REFUSAL


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _PathPayload(_Payload):
    # a bound method of an allow-listed type: pickled as getattr(PosixPath(...), "touch")
    def __reduce__(self):
        return (getattr, (pathlib.Path(self.marker), "touch"))


class _Tiny(lightning.LightningModule):
    def __init__(self, width: int = 3, extra=None):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(width, 1)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    x = torch.randn(32, 3)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("good") / "run"
    make_trainer(run, max_epochs=1, progress=False, loggers=()).fit(_Tiny(), _loader())
    return run / "checkpoints" / "last.ckpt"


def _malicious(good_ckpt, tmp_path, payload_cls=_Payload):
    """A real Lightning checkpoint with the payload hidden in its config."""
    marker = tmp_path / "PWNED"
    ck = torch.load(good_ckpt, weights_only=True)
    ck["hyper_parameters"]["extra"] = payload_cls(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(ck, evil)
    return evil, marker


def test_payload_is_real(good_ckpt, tmp_path):
    # sanity: the crafted file does run code when loaded the unsafe way
    evil, marker = _malicious(good_ckpt, tmp_path)
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload_cls", [_Payload, _PathPayload])
def test_safe_load_and_load_module_refuse(good_ckpt, tmp_path, payload_cls):
    evil, marker = _malicious(good_ckpt, tmp_path, payload_cls)
    for load in (safe_load, lambda p: load_module(p, _Tiny)):
        with pytest.raises(UnsafeCheckpointError) as e:
            load(evil)
        assert str(e.value).startswith(f"refusing to load {evil}: {REFUSAL}")
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=proto))
        with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
            safe_load(evil)
    assert not marker.exists()


def test_resume_is_covered(good_ckpt, tmp_path):
    evil, marker = _malicious(good_ckpt, tmp_path)
    trainer = make_trainer(tmp_path / "run", max_epochs=2, progress=False, loggers=())
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        trainer.fit(_Tiny(), _loader(), ckpt_path=str(evil))
    assert not marker.exists()
    # a genuine checkpoint still resumes (epoch 1 -> 2)
    trainer = make_trainer(tmp_path / "run2", max_epochs=2, progress=False, loggers=())
    trainer.fit(_Tiny(), _loader(), ckpt_path=str(good_ckpt))
    assert trainer.current_epoch == 2


def test_plain_config_types_load(good_ckpt, tmp_path):
    ck = torch.load(good_ckpt, weights_only=True)
    assert type(ck["hyper_parameters"]) is dict        # Lightning writes hparams as a plain dict
    extra = dict(path=pathlib.Path("runs/x"), score=np.float32(0.5), n=np.int64(3),
                 nested={"t": torch.ones(2), "l": [1, 2.0, None, "s", (True,)]})
    ck["hyper_parameters"]["extra"] = extra
    p = tmp_path / "ok.ckpt"
    torch.save(ck, p)
    assert safe_load(p)["hyper_parameters"]["extra"]["nested"]["l"] == [1, 2.0, None, "s", (True,)]
    got = load_module(p, _Tiny).hparams.extra
    assert got["path"] == pathlib.Path("runs/x") and got["score"] == np.float32(0.5) and got["n"] == 3
    torch.testing.assert_close(got["nested"]["t"], torch.ones(2))


def test_not_a_checkpoint(tmp_path, good_ckpt):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a checkpoint") as e:
        safe_load(junk)
    assert not isinstance(e.value, UnsafeCheckpointError)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good_ckpt.read_bytes()[:2000])
    with pytest.raises(UserError, match="cut.ckpt") as e:
        load_module(cut, _Tiny)
    assert not isinstance(e.value, UnsafeCheckpointError)
    with pytest.raises(UserError, match="not found"):
        safe_load(tmp_path / "missing.ckpt")
