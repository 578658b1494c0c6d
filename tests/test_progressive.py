"""Progressive schedules: layer-wise learning-rate decay, gradual unfreezing (1 and 2 processes), LP-FT."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_two_ranks
from safetensors.torch import load_file

from hf_transfer.errors import RecipeError
from hf_transfer.recipe import load_recipe, recipe_from_dict
from hf_transfer.strategies import StrategyError, apply_strategy, parameter_depths, unfreeze_schedule
from hf_transfer.tasks import build_model
from hf_transfer.train import optimizer_groups, train

LR, DECAY, WEIGHT_DECAY = 1e-3, 0.5, 0.01


def _model(tiny_bert, kind, pooling=None, training=None, **strategy):
    recipe = recipe_from_dict(
        {
            "model": str(tiny_bert),
            "data": {"source": "x", "max_length": 32},
            "strategy": {"kind": kind, "pooling": pooling, **strategy},
            "training": {"lr": LR, "weight_decay": WEIGHT_DECAY, **(training or {})},
        }
    )
    model = build_model(recipe, str(tiny_bert), {0: "neg", 1: "pos"}, pooling or "pooler")
    return apply_strategy(model, recipe), recipe


def _expected_lr(name: str) -> float:
    """The head and the top layer (1 of 2) at lr, layer 0 at lr × decay, the embeddings at lr × decay²."""
    if "encoder.layer.0." in name:
        return LR * DECAY
    if "embeddings" in name:
        return LR * DECAY**2
    return LR


def _lr_of(groups):
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize("kind", ["full", "lora", "partial"])
def test_layer_lr_decay_gives_each_layer_its_learning_rate(tiny_bert, kind):
    model, recipe = _model(
        tiny_bert, kind, training={"layer_lr_decay": DECAY}, **({"layers": 1} if kind == "partial" else {})
    )
    groups = optimizer_groups(model, recipe.training)
    lrs = _lr_of(groups)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(lrs) == len(trainable)  # every trainable parameter, once
    for name, parameter in trainable:
        assert lrs[id(parameter)] == (pytest.approx(_expected_lr(name)), WEIGHT_DECAY if parameter.ndim >= 2 else 0.0)
    expected = {_expected_lr(n) for n, _ in trainable}
    assert sorted({g["lr"] for g in groups}) == pytest.approx(sorted(expected))
    if kind == "full":
        assert len(expected) == 3
    if kind == "partial":
        assert expected == {LR}  # layer 1 is the top layer: the unlocked part all trains at lr


def test_without_decay_the_two_usual_groups_remain(tiny_bert):
    model, recipe = _model(tiny_bert, "full")
    groups = optimizer_groups(model, recipe.training)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(LR, WEIGHT_DECAY), (LR, 0.0)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_depths_and_the_unfreezing_schedule(tiny_bert):
    model, recipe = _model(tiny_bert, "full", unfreeze_every=2)
    depths = parameter_depths(model)
    assert depths["classifier.weight"] == depths["bert.pooler.dense.weight"] == 0
    assert depths["bert.encoder.layer.1.output.dense.weight"] == 1
    assert depths["bert.encoder.layer.0.output.dense.weight"] == 2
    assert depths["bert.embeddings.word_embeddings.weight"] == 3
    schedule = unfreeze_schedule(model, recipe)
    assert schedule["classifier.bias"] == 0 and schedule["bert.encoder.layer.1.attention.self.query.weight"] == 2
    assert schedule["bert.encoder.layer.0.attention.self.query.weight"] == 4
    assert schedule["bert.embeddings.LayerNorm.weight"] == 6
    partial, recipe = _model(tiny_bert, "partial", layers=1, unfreeze_every=1)
    assert set(unfreeze_schedule(partial, recipe).values()) == {0, 1}  # frozen parameters are never scheduled


@pytest.mark.parametrize(
    "strategy, training, message",
    [
        ({"kind": "head", "unfreeze_every": 1}, {}, r"'strategy.unfreeze_every' applies to kinds 'partial'"),
        ({"kind": "head", "warmup_head_epochs": 1}, {}, r"'strategy.warmup_head_epochs' applies to kinds"),
        ({"kind": "full", "warmup_head_lr": 0.1}, {}, r"'strategy.warmup_head_lr' is used only with"),
        ({"kind": "full"}, {"layer_lr_decay": 1.5}, r"training.layer_lr_decay = 1.5 is invalid"),
    ],
)
def test_schedule_keys_are_validated_naming_the_key(strategy, training, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict({"model": "m", "data": {"source": "x"}, "strategy": strategy, "training": training})


def test_schedules_that_do_not_fit_the_model_name_the_key(tiny_bert):
    # A rule between two recipe sections: refused when the recipe is read, before any model loads.
    with pytest.raises(RecipeError, match=r"training.layer_lr_decay applies to kinds"):
        _model(tiny_bert, "head", training={"layer_lr_decay": 0.8})
    with pytest.raises(StrategyError, match=r"strategy.warmup_head_epochs trains the head on pooled features"):
        _model(tiny_bert, "full", warmup_head_epochs=1)


def _epoch_weights(out: Path) -> list[dict[str, torch.Tensor]]:
    """The model weights saved in each end-of-epoch checkpoint, oldest first."""
    return [load_file(str(folder / "model.safetensors")) for folder in sorted((out / "checkpoints").iterdir())]


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in after if name in before and not torch.equal(before[name], after[name])}


def _part(name: str) -> str:
    for part in ("encoder.layer.1.", "encoder.layer.0.", "embeddings."):
        if part in name:
            return part.rstrip(".")
    return "head"


def test_gradual_unfreezing_trains_one_more_layer_each_epoch_top_down(tmp_path, make_recipe, tiny_bert):
    recipe = make_recipe(
        strategy={"kind": "full", "unfreeze_every": 1}, training={"epochs": 4, "save_total_limit": 4, "lr": 1e-3}
    )
    out = train(load_recipe(recipe))
    base = {f"bert.{k}": v for k, v in load_file(str(tiny_bert / "model.safetensors")).items()}
    epochs = _epoch_weights(out)
    assert len(epochs) == 4
    assert {_part(n) for n in _moved(base, epochs[0])} == {"head"}  # epoch 0: the head only (here: the pooler)
    moved_parts = [{_part(n) for n in _moved(a, b)} for a, b in zip(epochs, epochs[1:], strict=False)]
    assert moved_parts == [
        {"head", "encoder.layer.1"},
        {"head", "encoder.layer.1", "encoder.layer.0"},
        {"head", "encoder.layer.1", "encoder.layer.0", "embeddings"},
    ]


def test_two_ranks_hold_identical_weights_after_every_unfreezing_stage(tmp_path, tiny_bert, sentiment_folder):
    from conftest import recipe_yaml

    recipe = recipe_yaml(
        tmp_path / "r.yaml",
        tiny_bert,
        sentiment_folder,
        tmp_path / "unused",
        strategy={"kind": "full", "pooling": "mean", "unfreeze_every": 1, "warmup_head_epochs": 1},
        training={"epochs": 4, "batch_size": 4, "lr": 1e-3, "layer_lr_decay": 0.8, "save_total_limit": 4},
    )
    run_two_ranks(tmp_path, "weights", recipe, tmp_path)
    previous = None
    for epoch in range(1, 5):  # the loop state's epoch counts finished epochs
        ranks = [load_file(str(tmp_path / f"rank{r}-epoch{epoch}.safetensors")) for r in (0, 1)]
        assert ranks[0].keys() == ranks[1].keys()
        for name in ranks[0]:
            assert torch.equal(ranks[0][name], ranks[1][name]), (epoch, name)
        if previous is not None:
            moved = {_part(n) for n in _moved(previous, ranks[0])}
            expected = ["head", "encoder.layer.1", "encoder.layer.0", "embeddings"][:epoch]
            assert moved == set(expected), (epoch, moved)
        previous = ranks[0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["processes"] == 2


def test_lp_ft_starts_fine_tuning_from_a_head_fitted_on_frozen_features(tmp_path, make_recipe, tiny_bert, caplog):
    """With a fine-tuning learning rate of ~0, what is saved is the starting point: the backbone as pretrained and
    the head as the warm-up left it. That head fits the training data better than the random one it replaced."""
    import logging

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    caplog.set_level(logging.INFO, logger="hf_transfer")
    outs = {}
    for name, warmup in (("cold", None), ("warm", 5)):
        strategy = {"kind": "full", "pooling": "mean", "warmup_head_epochs": warmup, "feature_cache": False}
        recipe = make_recipe(f"{name}.yaml", strategy=strategy, training={"lr": 1e-12, "epochs": 1})
        outs[name] = train(load_recipe(recipe, output_dir=str(tmp_path / name)))
    assert "head warm-up: 5 epochs on frozen features" in caplog.text

    base = {f"bert.{k}": v for k, v in load_file(str(tiny_bert / "model.safetensors")).items()}
    rows = [
        line.rsplit(",", 1)
        for line in (Path(load_recipe(recipe).data.source) / "train.csv").read_text().splitlines()[1:]
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor([int(label == "pos") for _, label in rows])
    losses = {}
    for name, out in outs.items():
        saved = load_file(str(out / "model.safetensors"))
        assert all(torch.allclose(saved[n], base[n], atol=1e-6) for n in base if n in saved and "pooler" not in n)
        model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
        with torch.no_grad():
            losses[name] = torch.nn.functional.cross_entropy(model(**batch).logits, labels).item()
    assert losses["warm"] < losses["cold"] - 0.01, losses
