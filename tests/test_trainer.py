"""The trainer: exact resume, the non-finite guard, early stopping, EMA, schedules, DDP."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import toy_models  # noqa: F401  (registers test_noisy)
from dgm.config import OptimConfig, load_config
from dgm.core.errors import TrainingError
from dgm.train import trainer as trainer_mod
from dgm.train.trainer import lr_factor, train


def _cfg(*overrides: str):
    base = [
        "model.name=test_noisy", "data.name=digits", "train.epochs=4", "train.batch_size=100",
        "train.progress=false", "train.threads=1", "optim.lr=0.01",
    ]
    return load_config(overrides=base + list(overrides))


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


class _Killed(Exception):
    pass


def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
    extra = ("train.ema_decay=0.9", "optim.schedule=cosine", "optim.warmup_steps=3",
             "train.checkpoint_every_s=0")
    train(_cfg(*extra), tmp_path / "full")
    # Kill the second run right after its epoch-2 checkpoint, then resume it.
    save_last = trainer_mod._Trainer._save_last

    def save_then_die(self):
        save_last(self)
        if self.state.epoch == 2:
            raise _Killed

    monkeypatch.setattr(trainer_mod._Trainer, "_save_last", save_then_die)
    with pytest.raises(_Killed):
        train(_cfg(*extra), tmp_path / "part")
    monkeypatch.setattr(trainer_mod._Trainer, "_save_last", save_last)
    train(_cfg(*extra), tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma, mb = _metrics(tmp_path / "full"), _metrics(tmp_path / "part")
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]
    assert [m["val"] for m in ma] == [m["val"] for m in mb]


def test_resume_needs_a_checkpoint(tmp_path):
    from dgm.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_cfg(), tmp_path / "none", resume=True)


def test_existing_run_is_not_overwritten(tmp_path):
    from dgm.core.errors import ConfigError

    train(_cfg("train.epochs=1"), tmp_path / "r")
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg("train.epochs=1"), tmp_path / "r")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_non_finite_step_is_skipped_and_named(tmp_path, capsys):
    train(_cfg("model.nan_at_call=3"), tmp_path / "r")
    events = [m for m in _metrics(tmp_path / "r") if m.get("event") == "non_finite"]
    assert len(events) == 1 and events[0]["terms"] == ["bad"] and events[0]["batch"] == 2
    weights = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert "term(s) bad" in capsys.readouterr().err


def test_persistent_non_finite_rolls_back_then_stops(tmp_path):
    cfg = _cfg("model.nan_always=true", "train.max_bad_steps=2", "train.max_rollbacks=2")
    with pytest.raises(TrainingError, match="bad"):
        train(cfg, tmp_path / "r")
    rollbacks = [m for m in _metrics(tmp_path / "r") if m.get("event") == "rollback"]
    assert [r["lr_scale"] for r in rollbacks] == [0.5, 0.25]


def test_early_stopping_after_patience(tmp_path, monkeypatch):
    scripted = iter([5.0, 4.0, 4.5, 4.2, 4.1, 3.9, 6.0, 6.0, 6.0, 6.0])
    monkeypatch.setattr(trainer_mod._Trainer, "_validate", lambda self: next(scripted))
    result = train(_cfg("train.epochs=10", "train.patience=2"), tmp_path / "r")
    # best at epoch 2 (4.0); epochs 3, 4, 5 do not improve: 3 > patience 2 stops after epoch 5.
    assert result.epochs == 5 and result.best_epoch == 2 and result.stopped_early
    assert math.isclose(result.best_val, 4.0)


def test_best_weights_restored_at_the_end(tmp_path, monkeypatch):
    scripted = iter([3.0, 2.0, 5.0, 5.0])
    monkeypatch.setattr(trainer_mod._Trainer, "_validate", lambda self: next(scripted))
    train(_cfg(), tmp_path / "r")
    import dgm

    best = load_file(str(tmp_path / "r" / "model.safetensors"))
    model = dgm.load(tmp_path / "r")
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])
    last = load_file(str(tmp_path / "r" / "checkpoints" / "last.safetensors"))
    assert not torch.equal(last["model.net.0.weight"], best["net.0.weight"])


def test_lr_schedules():
    oc = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, oc) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))))
    assert lr_factor(9, 100, oc) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert lr_factor(100, 100, oc) == pytest.approx(0.1)
    lin = OptimConfig(schedule="linear")
    assert lr_factor(50, 100, lin) == pytest.approx(0.5)
    assert lr_factor(7, 100, OptimConfig()) == 1.0


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("adamax", torch.optim.Adamax),
                                       ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)])
def test_every_optimizer_name_builds_its_torch_optimizer(name, cls):
    w = torch.nn.Parameter(torch.ones(3))
    opt = trainer_mod.make_optimizer([w], OptimConfig(name=name, lr=0.1, momentum=0.5,
                                                      weight_decay=0.01))
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.1 and group["weight_decay"] == 0.01
    if "momentum" in group:
        assert group["momentum"] == 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, overrides: list[str]) -> None:
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })
    import tests_ddp_support  # noqa: F401  (registers the test model in the child)

    torch.set_num_threads(1)
    train(_cfg(*overrides), run_dir)
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_equal_one(tmp_path):
    # No dropout (p set by a fresh model? test_noisy has dropout): use the independent model,
    # whose gradients are deterministic, and batches that do not split evenly (1000 = 7*128+104).
    overrides = ["model.name=independent", "train.epochs=2", "train.batch_size=128",
                 "optim.lr=0.05"]
    train(_cfg(*overrides), tmp_path / "one")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two"), overrides), nprocs=2)
    a = load_file(str(tmp_path / "one" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "last.safetensors"))
    assert torch.allclose(a["model.logits"], b["model.logits"], atol=1e-5)
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["world_size"] == 2


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer_mod, "LOG_EVERY_S", 0.0)  # a within-epoch line after every batch
    train(_cfg("train.progress=true", "train.epochs=2"), tmp_path / "r")
    err = capsys.readouterr().err
    assert "epoch 1/2: train main" in err and "epoch 2/2:" in err and "(exact)" in err
    assert "epoch 1: batch 2/10" in err
    train(_cfg("train.progress=false", "train.epochs=1"), tmp_path / "quiet")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("monitor, label", [("fd", "Fréchet distance of 200 samples"),
                                            ("objective", "not a likelihood"),
                                            ("exact", "exact NLL")])
def test_the_monitor_is_chosen_and_labelled(tmp_path, monitor, label):
    result = train(_cfg(f"train.monitor={monitor}", "train.monitor_samples=200",
                        "train.epochs=2"), tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["val_method"] == monitor and label in info["val_label"]
    assert result.val_method == monitor and math.isfinite(result.best_val)
    rows = [m for m in _metrics(tmp_path / "r") if "epoch" in m and "val" in m]
    assert [m["val_method"] for m in rows] == [monitor, monitor]


def test_an_unknown_monitor_is_one_error(tmp_path):
    from dgm.core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.monitor"):
        train(_cfg("train.monitor=magic"), tmp_path / "r")


def test_checkpoints_follow_the_interval_and_the_end(tmp_path, monkeypatch):
    saves = []
    save_last = trainer_mod._Trainer._save_last

    def counted(self):
        saves.append(self.state.epoch)
        save_last(self)

    monkeypatch.setattr(trainer_mod._Trainer, "_save_last", counted)
    train(_cfg("train.epochs=5"), tmp_path / "slow")  # 30 s: the start and the last epoch
    assert saves == [0, 5]
    saves.clear()
    train(_cfg("train.epochs=3", "train.checkpoint_every_s=0"), tmp_path / "every")
    assert saves == [0, 1, 2, 3]
    # The best weights on disk are the best epoch's, written with the final checkpoint.
    import dgm

    info = json.loads((tmp_path / "slow" / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_completed"] == 5
    best = load_file(str(tmp_path / "slow" / "model.safetensors"))
    model = dgm.load(tmp_path / "slow")
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])
