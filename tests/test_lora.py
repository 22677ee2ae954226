"""LoRA adapters: the start equals the base model, only the adapters train, merging is exact;
fine-tuning a run from a base run through the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgm.config import RunConfig
from dgm.core.errors import ConfigError
from dgm.core.lora import LoRALinear, apply_lora, merge_lora
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.runs import open_run
from dgm.train.trainer import train

SPEC = DataSpec((8,), DataKind.TOKENS, num_levels=5)
TINY = {"hidden": 16, "num_layers": 2, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0}


def test_lora_layer_starts_at_the_base_and_counts_its_parameters() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    expected = base(x)
    layer = LoRALinear(base, rank=2, alpha=4.0)
    assert torch.equal(layer(x), expected)
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 2 * (6 + 4)
    with torch.no_grad():
        layer.lora_b.normal_()
    merged = layer.merged()
    assert torch.allclose(merged(x), layer(x), atol=1e-6)
    assert not torch.allclose(layer(x), expected)


def test_apply_lora_freezes_the_model_and_keeps_its_function() -> None:
    torch.manual_seed(0)
    model = build_model("gpt", SPEC, TINY).eval()
    x = torch.randint(0, 5, (4, 8))
    before = model.log_prob(x)
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    n = apply_lora(model, rank=2, targets=("qkv", "out", "fc_in", "fc_out"))
    assert n == 2 * 4
    assert torch.equal(model.log_prob(x), before)
    names = {k for k, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_" in k for k in names)
    # a few steps change the function but no base weight
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        model.loss(x).mean().backward()
        opt.step()
    assert not torch.allclose(model.log_prob(x), before)
    after = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    assert all(torch.equal(after[k], v) for k, v in base_weights.items())
    lp = model.log_prob(x)
    assert merge_lora(model) == 8
    assert torch.allclose(model.log_prob(x), lp, atol=1e-5)


def test_apply_lora_names_the_layers_when_nothing_matches() -> None:
    model = build_model("gpt", SPEC, TINY)
    with pytest.raises(ConfigError, match="fc_in"):
        apply_lora(model, rank=2, targets=("q_proj",))


def _tiny_text_config(tmp_path, **finetune: object) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"name": "gpt", **TINY},
        "data": {"name": "pydoc_topics", "options": {"block_size": 16}},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "threads": 1},
        "finetune": finetune,
    })


def test_finetune_with_lora_from_a_base_run(tmp_path) -> None:
    from dgm.data.dataset import load

    data = load("pydoc_topics", block_size=16)
    small = data.train.subset(slice(0, 256))
    data = type(data)(data.name, data.spec, small, data.val.subset(slice(0, 64)),
                      data.test.subset(slice(0, 64)), tokenizer=data.tokenizer)
    train(_tiny_text_config(tmp_path), tmp_path / "base", dataset=data)
    base = open_run(tmp_path / "base")
    assert (tmp_path / "base" / "tokenizer.json").is_file()
    base_model = base.load_model()
    cfg = _tiny_text_config(tmp_path, base_run=str(tmp_path / "base"), lora_rank=2)
    cfg.model = {"name": "gpt"}  # the base run's options are taken over
    result = train(cfg, tmp_path / "lora", dataset=data)
    tuned = open_run(tmp_path / "lora")
    assert tuned.config.model["hidden"] == 16 and tuned.config.finetune.lora_rank == 2
    model = tuned.load_model()
    assert result.num_parameters == base_model.num_parameters() + sum(
        p.numel() for n, p in model.named_parameters() if ".lora_" in n
    )
    # every base weight is unchanged; the adapters moved
    tuned_sd = model.state_dict()
    for k, v in base_model.state_dict().items():
        key = k.replace(".qkv.", ".qkv.base.").replace(".out.", ".out.base.")
        assert torch.equal(tuned_sd[key], v), k
    assert any(float(v.abs().sum()) > 0 for k, v in tuned_sd.items() if k.endswith("lora_b"))
    # a base run of another model is refused
    bad = _tiny_text_config(tmp_path, base_run=str(tmp_path / "base"))
    bad.model = {"name": "transformer"}
    with pytest.raises(ConfigError, match="gpt model"):
        train(bad, tmp_path / "bad", dataset=data)
