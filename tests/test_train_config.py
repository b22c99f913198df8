import math

import pytest
import torch

import vitlab
from vitlab.train.config import ConfigError, TrainConfig, list_recipes, load_config, to_dict
from vitlab.train.optim import lr_factor, param_groups


def test_recipes_resolve_and_overrides_are_typed():
    assert {"demo", "finetune"} <= set(list_recipes())
    cfg = load_config("demo", overrides=["optim.lr=3e-4", "data.dataset=cifar10", "epochs=2",
                                         "model.overrides.depth=2", "optim.betas=[0.9, 0.95]", "data.hflip=false"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr == 3e-4 and cfg.data.dataset == "cifar10" and cfg.epochs == 2
    assert cfg.model.overrides["depth"] == 2 and cfg.model.overrides["embed_dim"] == 96
    assert cfg.optim.betas == (0.9, 0.95) and cfg.data.hflip is False
    finetune = load_config("finetune")
    assert (finetune.optim.optimizer, finetune.optim.momentum, finetune.optim.weight_decay,
            finetune.optim.clip_grad) == ("sgd", 0.9, 0.0, 1.0)


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", r"unknown key 'optim.lrr'; valid keys here: optim.optimizer, optim.lr"),
    ("epochs=ten", "epochs: expected an integer, got 'ten'"),
    ("data.hflip=1", "data.hflip: expected true or false"),
    ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
    ("nonsense", "expected key=value"),
    ("epochs.x=1", "'epochs' is a value, not a section"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides=[override])


def test_unknown_recipe_and_config_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; built-in recipes: .*demo, finetune"):
        load_config("nope")
    path = tmp_path / "my.toml"
    path.write_text('epochs = 3\n[optim]\nlr = 0.1\n')
    cfg = load_config(config_file=path)
    assert cfg.epochs == 3 and cfg.optim.lr == 0.1
    path.write_text("epochs = [")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(config_file=path)


def test_config_round_trips_through_json_dict():
    from vitlab.train.config import from_dict

    cfg = load_config("demo")
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_no_weight_decay_on_norms_biases_positions_and_tokens_and_layer_decay():
    model = vitlab.create_model("Ti/4@32", depth=3, num_register_tokens=2, layer_scale_init=1e-5)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert {"pos_embed", "cls_token", "reg_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias",
            "blocks.0.ls1.gamma", "head.bias", "patch_embed.proj.bias"} <= plain
    assert {"blocks.0.attn.qkv.weight", "blocks.2.mlp.fc2.weight", "head.weight", "patch_embed.proj.weight"} <= decayed
    assert decayed.isdisjoint(plain) and len(decayed | plain) == len(list(model.parameters()))
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.2.mlp.fc1.weight"] == 0.5
    assert scale["blocks.0.mlp.fc1.weight"] == 0.5**3 and scale["patch_embed.proj.weight"] == 0.5**4


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    factors = [lr_factor(s, 100, 10) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    assert not any(math.isnan(f) for f in factors)
    assert torch.tensor(factors).min() >= 0


def test_a_time_budget_drives_the_cosine():
    assert lr_factor(10, 1000, 10, time_progress=0.5) == pytest.approx(0.5)  # time ahead of steps: time decides
    assert lr_factor(10, 1000, 10, time_progress=1.0) == pytest.approx(0.0)
    assert lr_factor(55, 100, 10, time_progress=0.1) == pytest.approx(0.5)  # steps ahead of time: steps decide
    assert lr_factor(5, 100, 10, time_progress=0.9) == pytest.approx(0.6)  # warmup is counted in steps
