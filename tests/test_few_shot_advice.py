"""Few rows per class: `advise` recommends the few-shot strategy (and says why), `compare` can run it, and the L-BFGS
head on a handful of rows takes scikit-learn's default C instead of a cross-validation that ties across the grid."""

import torch
from accelerate import Accelerator
from datasets import Dataset

from hf_transfer.compare import parse_spec, recipe_tree_with
from hf_transfer.features import FEW_ROWS_FOR_CV, fit_logistic_head
from hf_transfer.recipe import HeadConfig, recipe_from_dict
from hf_transfer.recommend import FEW_SHOT_MAX_PER_CLASS, recommend


def _curve(accuracies):
    return [
        {"layer": i, "name": f"layer {i}", "accuracy": a, "accuracy_std": 0.01, "folds": 5}
        for i, a in enumerate(accuracies)
    ]


def test_few_rows_per_class_recommend_the_contrastive_strategy_and_say_why():
    curve = _curve([0.6, 0.7, 0.8])
    few = {"majority_rate": 0.5, "train_examples": 16, "examples_per_class": {"a": 8, "b": 8}}
    advice = recommend(curve, few)
    assert (advice["strategy"], advice["spec"]) == ("contrastive", "contrastive")
    reason = advice["reasons"][-1]
    assert f"8 per class (median class) ≤ {FEW_SHOT_MAX_PER_CLASS}" in reason
    assert "RESULTS.md" in reason and "contrastive loss" in reason
    at_threshold = {**few, "examples_per_class": {"a": FEW_SHOT_MAX_PER_CLASS, "b": 500}}
    assert recommend(curve, at_threshold)["strategy"] == "contrastive"
    plenty = {**few, "train_examples": 4000, "examples_per_class": {"a": 2000, "b": 2000}}
    assert recommend(curve, plenty)["strategy"] != "contrastive"


def _base():
    return recipe_from_dict(
        {"model": "m", "data": {"source": "d"}, "strategy": {"kind": "lora", "r": 8}, "training": {"lr": 1e-3}}
    )


def test_compare_and_advise_can_turn_any_recipe_into_the_contrastive_one_and_back():
    base = _base()
    kind, overrides = parse_spec("contrastive:4@2e-5", base)
    contrastive = recipe_from_dict(recipe_tree_with(base, overrides))
    assert kind == "contrastive"
    s = contrastive.strategy
    assert (s.kind, s.r, s.head.type, contrastive.training.lr) == ("contrastive", 4, "lbfgs", 2e-5)
    tuned = recipe_from_dict(recipe_tree_with(contrastive, ["strategy.loss=pairs", "strategy.class_block=2"]))
    for spec in ("head", "full", "lora:8", "partial:1"):
        back = recipe_from_dict(recipe_tree_with(tuned, parse_spec(spec, tuned)[1]))
        assert (back.strategy.loss, back.strategy.class_block) == ("triplet", 4), spec
    plain = recipe_from_dict(recipe_tree_with(base, parse_spec("contrastive", base)[1]))
    assert plain.strategy.r is None  # the LoRA recipe's rank does not put adapters on the contrastive phase
    assert recipe_from_dict(recipe_tree_with(plain, parse_spec("lora", plain)[1])).strategy.r == 16


def test_a_handful_of_rows_takes_the_default_C_instead_of_a_tied_grid():
    labels = torch.arange(16) % 2
    features = torch.randn(16, 6, generator=torch.Generator().manual_seed(0)) + labels[:, None] * 0.5
    split = Dataset.from_dict({"features": features.numpy(), "labels": labels.numpy()}).with_format("torch")
    assert len(split) < FEW_ROWS_FOR_CV
    fitted = fit_logistic_head(Accelerator(cpu=True), torch.nn.Linear(6, 2), split, HeadConfig(type="lbfgs"))
    assert fitted == {"C": 1.0}
    grid = fit_logistic_head(
        Accelerator(cpu=True), torch.nn.Linear(6, 2), split, HeadConfig(type="lbfgs", C=[0.01, 100.0])
    )
    assert grid["C"] in (0.01, 100.0)  # a grid the recipe gives is still searched
