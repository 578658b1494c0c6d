"""Class imbalance: loss weights per class (by hand on a tiny batch, and in the loop), and the balanced sampler."""

import math
from collections import Counter

import pytest
import torch
from conftest import recipe_yaml, sentiment_rows, write_csv

from hf_transfer import train as train_module
from hf_transfer.recipe import load_recipe, recipe_from_dict
from hf_transfer.sampling import balanced_sample_weights, class_weights, make_loader, weighted_loss
from hf_transfer.train import TrainingError, train


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory, sentiment_folder):
    """Train: 72 'neg' rows and 24 'pos' rows; validation and test balanced."""
    folder = tmp_path_factory.mktemp("imbalanced")
    rows = sentiment_rows(400, 5)
    negative = [r for r in rows if r[1] == "neg"][:72]
    positive = [r for r in rows if r[1] == "pos"][:24]
    write_csv(
        folder / "train.csv",
        [row for pair in zip(negative[::3], negative[1::3], negative[2::3], positive, strict=True) for row in pair],
    )
    for name in ("validation.csv", "test.csv"):
        (folder / name).write_text((sentiment_folder / name).read_text())
    return folder


def test_class_weights_change_the_loss_exactly_as_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    row_losses = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]
    by_hand = (1 * row_losses[0] + 3 * row_losses[1] + 3 * row_losses[2]) / (1 + 3 + 3)
    assert weighted_loss(logits, labels, torch.tensor([1.0, 3.0])).item() == pytest.approx(by_hand, rel=1e-6)
    unweighted = sum(row_losses) / 3
    assert weighted_loss(logits, labels, torch.tensor([1.0, 1.0])).item() == pytest.approx(unweighted, rel=1e-6)
    assert by_hand != pytest.approx(unweighted)


def _recipe(**training):
    return recipe_from_dict({"model": "m", "data": {"source": "x"}, "training": training})


def test_class_weight_settings_map_to_label_ids():
    id2label = {0: "neg", 1: "pos", 2: "mixed"}
    labels = [0] * 6 + [1] * 3 + [2] * 1
    balanced = class_weights(_recipe(class_weights="balanced"), labels, id2label)
    assert balanced.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    named = class_weights(_recipe(class_weights={"pos": 2.5}), labels, id2label)
    assert named.tolist() == [1.0, 2.5, 1.0]
    assert class_weights(_recipe(class_weights="none"), labels, id2label) is None
    with pytest.raises(TrainingError, match=r"training.class_weights names 'positive', not a label"):
        class_weights(_recipe(class_weights={"positive": 2}), labels, id2label)


def test_the_loop_weights_its_loss_by_class(tmp_path, tiny_bert, imbalanced_folder, monkeypatch):
    seen = []

    def spy(logits, labels, class_weight):
        loss = weighted_loss(logits, labels, class_weight)
        log_p = torch.log_softmax(logits.detach().float(), dim=-1)
        w = class_weight[labels]
        by_hand = -(w * log_p[torch.arange(len(labels)), labels]).sum() / w.sum()
        seen.append((class_weight.tolist(), loss.item(), by_hand.item()))
        return loss

    monkeypatch.setattr(train_module, "weighted_loss", spy)
    path = recipe_yaml(
        tmp_path / "r.yaml",
        tiny_bert,
        imbalanced_folder,
        tmp_path / "out",
        training={"epochs": 1, "class_weights": "balanced"},
    )
    train(load_recipe(path))
    assert len(seen) == 12  # every one of the 96 / 8 steps
    for weights, loss, by_hand in seen:
        assert weights == pytest.approx([96 / (2 * 72), 96 / (2 * 24)])  # neg, pos
        assert loss == pytest.approx(by_hand, rel=1e-5)


def test_lbfgs_head_takes_the_class_weights(tmp_path, tiny_bert, imbalanced_folder, monkeypatch):
    from sklearn.linear_model import LogisticRegressionCV

    weights = []
    original_fit = LogisticRegressionCV.fit
    monkeypatch.setattr(
        LogisticRegressionCV, "fit", lambda self, x, y: weights.append(self.class_weight) or original_fit(self, x, y)
    )
    path = recipe_yaml(
        tmp_path / "r.yaml",
        tiny_bert,
        imbalanced_folder,
        tmp_path / "out",
        strategy={"kind": "head", "pooling": "mean", "head": {"type": "lbfgs"}, "feature_cache": False},
        training={"class_weights": {"pos": 3}},
    )
    train(load_recipe(path))
    assert weights == [{0: 1.0, 1: 3.0}]


def test_balanced_sampler_draws_classes_evenly_and_reproducibly():
    labels = [0] * 72 + [1] * 24
    sample_weights = balanced_sample_weights(labels)
    assert sum(w for w, y in zip(sample_weights, labels, strict=True) if y == 1) == pytest.approx(1.0)
    drawn = []
    for _ in range(2):
        loader, _ = make_loader(list(range(96)), 8, list, True, None, 3, sample_weights=sample_weights)
        drawn.append([index for batch in loader for index in batch])
    assert drawn[0] == drawn[1] and len(drawn[0]) == 96
    positives = sum(labels[i] for i in drawn[0])
    assert 33 <= positives <= 63, positives  # about half, against a quarter without the sampler


def test_balanced_sampler_run_sees_the_minority_class_about_half_the_time(
    tmp_path, tiny_bert, imbalanced_folder, monkeypatch
):
    drawn = Counter()
    original = train_module.weighted_loss
    monkeypatch.setattr(
        train_module, "weighted_loss", lambda lo, la, w: drawn.update(la.tolist()) or original(lo, la, w)
    )
    path = recipe_yaml(
        tmp_path / "r.yaml",
        tiny_bert,
        imbalanced_folder,
        tmp_path / "out",
        training={"epochs": 2, "balanced_sampler": True, "class_weights": {"neg": 1}},
    )
    out = train(load_recipe(path))
    assert (out / "metrics.json").is_file()
    assert sum(drawn.values()) == 192 and 0.35 < drawn[1] / 192 < 0.65, drawn


@pytest.mark.parametrize("key, value", [("class_weights", "balanced"), ("balanced_sampler", True)])
def test_class_options_need_single_label_classification(tmp_path, tiny_bert, key, value):
    folder = tmp_path / "reg"
    folder.mkdir()
    write_csv(folder / "train.csv", [(f"{'great ' * (i % 4)}film", i % 4 / 3) for i in range(40)])
    path = recipe_yaml(
        tmp_path / "r.yaml", tiny_bert, folder, tmp_path / "out", task="text-regression", training={key: value}
    )
    refusal = rf"training.{key} applies to single-label (and token )?classification, not task 'text-regression'"
    with pytest.raises(TrainingError, match=refusal):
        train(load_recipe(path))
