"""Every update rule on a tiny model with a known answer: it converges there, a resumed run equals
an uninterrupted one bit for bit, the non-finite guard of each player fires and rolls back, and
two gloo processes equal one."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import rule_models  # noqa: F401  (registers test_game, test_chain, test_aux)
from dgm.config import load_config
from dgm.core.errors import ConfigError, TrainingError
from dgm.core.fitting import TwoPlayerFit
from dgm.data.dataset import load as load_dataset
from dgm.train import trainer as trainer_mod
from dgm.train.trainer import train

MOONS = ["data.name=moons", "data.options={n_train: 512, n_val: 128, n_test: 128}"]
RULES = {
    "game": ["model.name=test_game", "optim.name=sgd", "optim.lr=0.1", "model.critic_steps=2"],
    "chain": ["model.name=test_chain", "optim.name=sgd", "optim.lr=0.1"],
    "aux": ["model.name=test_aux", "optim.name=sgd", "optim.lr=0.1", "players.aux={lr: 0.2}"],
}


def _cfg(rule: str, *extra: str):
    base = ["train.batch_size=64", "train.epochs=6", "train.progress=false", "train.threads=1",
            "train.patience=null", *MOONS, *RULES[rule]]
    return load_config(overrides=base + list(extra))


def _mean() -> torch.Tensor:
    return load_dataset("moons", n_train=512, n_val=128, n_test=128).train.x.double().mean(0)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- known answers -----------------------------------------------------------------------------


def test_two_player_game_reaches_its_equilibrium(tmp_path):
    train(_cfg("game", "train.epochs=30"), tmp_path / "r")
    w = _weights(tmp_path / "r")
    torch.testing.assert_close(w["model.g"].double(), _mean(), atol=0.05, rtol=0)
    assert float(w["model.d"].abs().max()) < 0.05
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["fit"] == "TwoPlayerFit" and info["players"] == ["discriminator", "generator"]
    assert info["val_method"] == "objective" and "not a likelihood" in info["val_label"]
    # 8 batches an epoch: 8 critic steps and 4 generator steps (critic_steps = 2).
    state = json.loads(json.dumps(_metrics(tmp_path / "r")[-1]))
    assert state["step"] == 30 * 12
    assert {"train_loss_discriminator", "train_loss_generator"} <= set(state)


def test_persistent_chains_recover_the_data_mean(tmp_path):
    train(_cfg("chain", "train.epochs=25"), tmp_path / "r")
    w = _weights(tmp_path / "r")
    torch.testing.assert_close(w["model.theta"].double(), _mean(), atol=0.08, rtol=0)
    chains = w["model.chains"].double()
    # 256 chains of N(θ, I): their mean within ~4 standard errors (1/16) of θ, variance ~1.
    torch.testing.assert_close(chains.mean(0), w["model.theta"].double(), atol=0.25, rtol=0)
    assert 0.75 < float(chains.var(0).mean()) < 1.3


def test_auxiliary_parameter_reaches_its_optimum(tmp_path):
    train(_cfg("aux", "train.epochs=20"), tmp_path / "r")
    w = _weights(tmp_path / "r")
    torch.testing.assert_close(w["model.theta"].double(), _mean(), atol=0.05, rtol=0)
    # a trails θ by about one step of θ's batch noise (a started at -2).
    torch.testing.assert_close(w["model.a"], w["model.theta"], atol=0.03, rtol=0)


def test_each_player_keeps_its_own_parameters():
    from dgm.core.registry import build_model
    from dgm.train.updates import player_parameters

    spec = load_dataset("moons", n_train=8, n_val=8, n_test=8).spec
    aux = build_model("test_aux", spec)
    groups = player_parameters(aux, aux.fit)
    assert [p is aux.a for p in groups["aux"]] == [True]
    assert all(p is not aux.a for p in groups["main"])
    game = build_model("test_game", spec)
    groups = player_parameters(game, game.fit)
    assert groups["discriminator"][0] is game.d and groups["generator"][0] is game.g
    with pytest.raises(ConfigError, match="critic_steps"):
        TwoPlayerFit(critic_steps=0)


def test_players_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="not a player"):
        train(_cfg("aux", "players.critic={lr: 0.1}"), tmp_path / "r")
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg("aux", "players.aux={rate: 0.1}")


# --- exact resume ------------------------------------------------------------------------------


class _Killed(Exception):
    pass


@pytest.mark.parametrize("rule", list(RULES))
def test_resume_equals_uninterrupted(rule, tmp_path, monkeypatch):
    extra = ("optim.schedule=cosine", "optim.momentum=0.5", "train.ema_decay=0.9",
             "train.epochs=4", "train.checkpoint_every_s=0")
    train(_cfg(rule, *extra), tmp_path / "full")
    save_last = trainer_mod._Trainer._save_last

    def save_then_die(self):
        save_last(self)
        if self.state.epoch == 2:
            raise _Killed

    monkeypatch.setattr(trainer_mod._Trainer, "_save_last", save_then_die)
    with pytest.raises(_Killed):
        train(_cfg(rule, *extra), tmp_path / "part")
    monkeypatch.setattr(trainer_mod._Trainer, "_save_last", save_last)
    train(_cfg(rule, *extra), tmp_path / "part", resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    assert any(k.startswith("optim.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma, mb = _metrics(tmp_path / "full"), _metrics(tmp_path / "part")
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]


def test_run_killed_in_its_first_epoch_resumes(tmp_path, monkeypatch):
    train(_cfg("chain", "train.epochs=2"), tmp_path / "full")

    def die(self, epoch):
        raise _Killed

    monkeypatch.setattr(trainer_mod._Trainer, "_train_epoch", die)
    with pytest.raises(_Killed):
        train(_cfg("chain", "train.epochs=2"), tmp_path / "part")
    assert json.loads((tmp_path / "part" / "run.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    train(_cfg("chain", "train.epochs=2"), tmp_path / "part", resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_interrupt_marks_the_run(tmp_path, monkeypatch):
    def interrupt(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod._Trainer, "_train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg("aux"), tmp_path / "r")
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "interrupted"


def test_checkpoint_of_the_wrong_shape_is_one_error(tmp_path):
    from dgm.core.errors import CheckpointError
    from dgm.checkpoints import load_tensors, save_tensors

    train(_cfg("aux", "train.epochs=1"), tmp_path / "r")
    path = tmp_path / "r" / "checkpoints" / "last.safetensors"
    tensors, state = load_tensors(path)
    save_tensors(path, tensors, {"loop": [1, 2], "optim": {}})
    with pytest.raises(CheckpointError, match="does not hold a checkpoint"):
        train(_cfg("aux", "train.epochs=2"), tmp_path / "r", resume=True)
    save_tensors(path, tensors, {"something": "else"})
    with pytest.raises(CheckpointError, match="does not hold a checkpoint"):
        train(_cfg("aux", "train.epochs=2"), tmp_path / "r", resume=True)


# --- the non-finite guard, per player ----------------------------------------------------------


@pytest.mark.parametrize("rule, player", [("game", "generator"), ("game", "discriminator"),
                                          ("aux", "aux"), ("chain", "main")])
def test_a_non_finite_step_of_one_player_is_skipped(rule, player, tmp_path):
    train(_cfg(rule, f"model.nan_player={player}", "model.nan_at_call=3", "train.epochs=2"),
          tmp_path / "r")
    events = [m for m in _metrics(tmp_path / "r") if m.get("event") == "non_finite"]
    assert len(events) == 1 and events[0]["player"] == player
    w = _weights(tmp_path / "r")
    assert all(torch.isfinite(v).all() for v in w.values())
    # The skipped step was not counted: one step fewer for that player.
    clean = tmp_path / "clean"
    train(_cfg(rule, "train.epochs=2"), clean)
    assert _metrics(tmp_path / "r")[-1]["step"] == _metrics(clean)[-1]["step"] - 1


@pytest.mark.parametrize("rule, player", [("game", "generator"), ("aux", "aux"),
                                          ("chain", "main")])
def test_persistent_non_finite_rolls_back_that_player(rule, player, tmp_path):
    cfg = _cfg(rule, f"model.nan_player={player}", "model.nan_always=true",
               "train.max_bad_steps=2", "train.max_rollbacks=2")
    with pytest.raises(TrainingError, match="non-finite"):
        train(cfg, tmp_path / "r")
    rollbacks = [m for m in _metrics(tmp_path / "r") if m.get("event") == "rollback"]
    assert [(r["player"], r["lr_scale"]) for r in rollbacks] == [(player, 0.5), (player, 0.25)]


# --- two processes equal one -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, rule: str) -> None:
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })
    import tests_ddp_support  # noqa: F401  (registers the test models in the child)

    torch.set_num_threads(1)
    train(_cfg(rule, "train.epochs=2", "train.batch_size=100"), run_dir)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("rule", list(RULES))
def test_two_gloo_processes_equal_one(rule, tmp_path):
    # 512 examples in batches of 100: the last batch (12) does not split evenly either.
    train(_cfg(rule, "train.epochs=2", "train.batch_size=100"), tmp_path / "one")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two"), rule), nprocs=2)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in a:
        if key.startswith("model."):
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
