"""Strategies: exact trainable sets and counts on a tiny BERT, and after a real optimizer step, which weights moved."""

import pytest
import torch

from hf_transfer.recipe import recipe_from_dict
from hf_transfer.strategies import (
    StrategyError,
    apply_strategy,
    count_parameters,
    encoder_layers,
    head_module_names,
    keep_frozen_norms_in_eval,
)
from hf_transfer.tasks import build_model

HIDDEN, INTERMEDIATE, LABELS = 32, 37, 2
LINEAR = lambda i, o: i * o + o  # noqa: E731
CLASSIFIER = LINEAR(HIDDEN, LABELS)
POOLER = LINEAR(HIDDEN, HIDDEN)
ONE_LAYER = 4 * LINEAR(HIDDEN, HIDDEN) + LINEAR(HIDDEN, INTERMEDIATE) + LINEAR(INTERMEDIATE, HIDDEN) + 2 * 2 * HIDDEN


def _model(tiny_bert, kind, pooling=None, **strategy):
    recipe = recipe_from_dict(
        {
            "model": str(tiny_bert),
            "data": {"source": "x", "max_length": 32},
            "strategy": {"kind": kind, "pooling": pooling, **strategy},
        }
    )
    model = build_model(recipe, str(tiny_bert), {0: "neg", 1: "pos"}, pooling or "pooler")
    return apply_strategy(model, recipe), recipe


def _step(model, tokenizer_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    batch = tokenizer(["a great film", "a dull film", "fine"], padding=True, return_tensors="pt")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(**batch, labels=torch.tensor([1, 0, 1])).loss
    loss.backward()
    optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_head_trains_exactly_classifier_and_pooler(tiny_bert):
    model, _ = _model(tiny_bert, "head")
    assert head_module_names(model) == ["bert.pooler", "classifier"]
    assert count_parameters(model)[0] == CLASSIFIER + POOLER
    moved = _step(model, tiny_bert)
    assert moved == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("classifier", "bert.pooler")) for n in moved)


def test_mean_pooled_head_has_no_pooler_and_trains_only_the_classifier(tiny_bert):
    model, _ = _model(tiny_bert, "head", pooling="mean")
    assert type(model).__name__ == "PooledModelForSequenceClassification"
    assert count_parameters(model)[0] == CLASSIFIER
    assert _step(model, tiny_bert) == {"classifier.weight", "classifier.bias"}


def test_partial_unlocks_the_last_n_layers_and_the_head(tiny_bert):
    model, _ = _model(tiny_bert, "partial", layers=1)
    assert encoder_layers(model)[0] == "bert.encoder.layer"
    assert count_parameters(model)[0] == ONE_LAYER + CLASSIFIER + POOLER
    moved = _step(model, tiny_bert)
    assert any(n.startswith("bert.encoder.layer.1.") for n in moved)
    assert not any(n.startswith(("bert.encoder.layer.0.", "bert.embeddings")) for n in moved)


def test_partial_with_more_layers_than_the_model_names_the_key(tiny_bert):
    with pytest.raises(StrategyError, match=r"strategy.layers = 5 but .* has only 2 layers"):
        _model(tiny_bert, "partial", layers=5)


def test_lora_trains_adapters_and_the_head_only(tiny_bert):
    r = 4
    model, _ = _model(tiny_bert, "lora", r=r)
    lora = lambda i, o: r * i + o * r  # noqa: E731
    per_layer = 4 * lora(HIDDEN, HIDDEN) + lora(HIDDEN, INTERMEDIATE) + lora(INTERMEDIATE, HIDDEN)
    assert count_parameters(model)[0] == 2 * per_layer + CLASSIFIER + POOLER
    moved = _step(model, tiny_bert)
    assert moved, "nothing moved"
    assert all("lora_" in n or "modules_to_save" in n for n in moved)
    assert any("lora_B" in n for n in moved)


def test_lora_target_modules_that_match_nothing_are_named(tiny_bert):
    with pytest.raises(
        StrategyError, match=r"strategy.target_modules \[.q_proj.\] match no linear or convolution layer"
    ):
        _model(tiny_bert, "lora", target_modules=["q_proj"])


def test_full_trains_everything(tiny_bert):
    model, _ = _model(tiny_bert, "full")
    trainable, total = count_parameters(model)
    assert trainable == total
    moved = _step(model, tiny_bert)
    assert any(n.startswith("bert.embeddings") for n in moved)
    assert any(n.startswith("bert.encoder.layer.0.") for n in moved)


def test_frozen_batchnorm_keeps_its_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    for p in model[1].parameters():
        p.requires_grad = False
    model.train()
    keep_frozen_norms_in_eval(model)
    running = model[1].running_mean.clone()
    model(torch.randn(8, 4))
    assert not model[1].training and torch.equal(running, model[1].running_mean)
