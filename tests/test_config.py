"""Run configs: YAML round trip, overrides, type checks, and every shipped preset."""

from pathlib import Path

import pytest
import yaml

from dgm.config import RunConfig, apply_overrides, load_config, save_config
from dgm.core.errors import ConfigError
from dgm.core.registry import model_entry
from dgm.core.configuration import from_dict

PRESETS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_round_trip(tmp_path):
    cfg = load_config(overrides=["model.name=arm", "train.epochs=7", "optim.lr=3e-4",
                                 "optim.betas=[0.5, 0.9]", "train.grad_clip=1"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.optim.betas == (0.5, 0.9) and again.train.grad_clip == 1.0
    assert again.optim.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.batch_size=1.5", "expected an integer"),
        ("optim.name=lbfgs", "is not one of adam"),
        ("train.device=tpu", "is not one of auto"),
        ("train.nonsense=1", "unknown key nonsense"),
        ("optim.betas=[1, 2, 3]", "expected 2 items"),
        ("trainepochs", "must look like key.sub=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["model.name=vae", override])


def test_overrides_do_not_mutate():
    d = {"train": {"epochs": 3}}
    out = apply_overrides(d, ["train.epochs=5"])
    assert d["train"]["epochs"] == 3 and out["train"]["epochs"] == 5


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_validates(path):
    text = path.read_text()
    assert text.lstrip().startswith("#"), "presets open with a comment saying how to run them"
    cfg = load_config(path)
    entry = model_entry(cfg.model_name)
    from_dict(entry.config_cls, cfg.model_options, where=str(path))
    assert isinstance(yaml.safe_load(text), dict)
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize("model, old, new", [("arm", "hidden_channels", "hidden"),
                                             ("pixelcnn", "hidden_channels", "hidden"),
                                             ("transformer", "width", "hidden"),
                                             ("vqvae", "prior_width", "prior_hidden")])
def test_one_name_for_the_hidden_width(model, old, new, tmp_path):
    """Every model calls its hidden width ``hidden``; an old name is refused with the new one,
    while a run saved under the old name still loads."""
    import yaml

    import dgm
    from dgm.core.errors import ConfigError
    from dgm.runs import open_run

    data = dgm.datasets.load("digits")
    with pytest.raises(ConfigError, match=f"{old} was renamed {new}"):
        dgm.build_model(model, data.spec, {old: 8})
    run = tmp_path / "run"
    dgm.train(load_config(overrides=[f"model.name={model}", f"model.{new}=8",
                                     "train.epochs=1", "train.progress=false"]), run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["model"][old] = saved["model"].pop(new)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert open_run(run).config.model[new] == 8
    dgm.load(run)
