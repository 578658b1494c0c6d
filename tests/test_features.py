"""Frozen-head features: the persistent cache (hit, miss on every key change, rebuild when corrupt) and heads on it."""

import json
import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import run_two_ranks
from datasets import DatasetDict
from transformers import BertModel

from hf_transfer.features import (
    FEATURE_CACHE_ENV,
    FeatureCache,
    extract_features,
    feature_cache_root,
    feature_datasets,
)
from hf_transfer.inference import evaluate_run, load_run, predict_texts
from hf_transfer.recipe import load_recipe
from hf_transfer.sources import resolve_model
from hf_transfer.strategies import apply_strategy
from hf_transfer.tasks import build_model, choose_pooling, prepare_data
from hf_transfer.tasks.text_classification import TEXT_FEATURES, load_tokenizer, tokenize_splits
from hf_transfer.train import train


@pytest.fixture
def backbone_calls(monkeypatch):
    """How many times any BERT backbone ran a forward pass."""
    calls = []
    original = BertModel.forward
    logging.getLogger("hf_transfer").setLevel(logging.INFO)  # hits and misses are logged at INFO

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", counted)
    yield calls
    logging.getLogger("hf_transfer").setLevel(logging.NOTSET)


def _head_recipe(make_recipe, cache, **strategy):
    return make_recipe(strategy={"kind": "head", "pooling": "mean", "feature_cache": str(cache), **strategy})


def test_rerun_reads_every_split_from_the_cache_and_the_export_reproduces_it(
    tmp_path, make_recipe, backbone_calls, caplog
):
    recipe = load_recipe(_head_recipe(make_recipe, tmp_path / "cache"), ["training.lr=1e-2"])
    first = train(recipe)
    assert len(backbone_calls) > 0
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").rglob("*.safetensors")) == [
        "test",
        "train",
        "validation",
    ]
    backbone_calls.clear()
    caplog.clear()
    second = train(load_recipe(first / "recipe.yaml", output_dir=str(tmp_path / "second")))
    assert backbone_calls == []  # no split was encoded again
    assert caplog.text.count("feature cache hit") == 3 and "feature cache miss" not in caplog.text
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (first, second)]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["validation"] == metrics[1]["validation"]

    # The saved model, run on text, makes the predictions the head made on the cached features.
    assert evaluate_run(second, split="test")["accuracy"] == pytest.approx(metrics[1]["test"]["accuracy"])
    examples = json.loads((second / "run.json").read_text())["examples"]
    predicted = predict_texts(load_run(second), [e["text"] for e in examples])
    for example, prediction in zip(examples, predicted, strict=True):
        assert prediction["label"] == example["prediction"]
        assert prediction["scores"][example["prediction"]] == pytest.approx(example["score"], abs=1e-5)


def _features(recipe, cache_root, overrides=()):
    """feature_datasets for a recipe, as train() calls it, returning the features and the cache used."""
    recipe = load_recipe(recipe, [f"strategy.feature_cache={cache_root}", *overrides])
    source = resolve_model(recipe.model)
    data = prepare_data(recipe)
    tokenizer = load_tokenizer(source.location, recipe)
    tokenized = tokenize_splits(DatasetDict({"train": data.splits["train"]}), tokenizer, recipe.data.max_length)
    pooling = choose_pooling(recipe, Path(source.location))
    model = apply_strategy(build_model(recipe, source.location, data.labels.id2label, pooling), recipe)
    cache = FeatureCache.for_run(recipe, source, tokenizer, pooling, data.splits, model, TEXT_FEATURES)
    splits = feature_datasets(Accelerator(cpu=True), model, tokenized, tokenizer, 16, extract_features, cache)
    return splits["train"][:]["features"], cache


@pytest.mark.parametrize(
    "change",
    [["data.max_length=6"], ["strategy.pooling=cls"], ["strategy.normalize=true"], "data"],
    ids=["max_length", "pooling", "normalize", "data-content"],
)
def test_any_key_change_misses_the_cache(tmp_path, make_recipe, sentiment_folder, backbone_calls, caplog, change):
    cache = tmp_path / "cache"
    recipe = _head_recipe(make_recipe, cache)
    reference, _ = _features(recipe, cache)
    _features(recipe, cache)
    backbone_calls.clear()
    caplog.clear()
    if change == "data":
        changed = tmp_path / "changed"
        changed.mkdir()
        for name in ("train.csv", "validation.csv", "test.csv"):
            lines = (sentiment_folder / name).read_text().splitlines(keepends=True)
            if name == "train.csv":
                lines[1] = lines[1].replace("film", "show") if "film" in lines[1] else lines[1].replace(",", " x,", 1)
            (changed / name).write_text("".join(lines))
        features, _ = _features(recipe, cache, [f"data.source={changed}"])
        assert torch.allclose(features[1:], reference[1:], atol=1e-5)
        assert not torch.allclose(features[0], reference[0], atol=1e-3)
    else:
        features, _ = _features(recipe, cache, change)
        assert not torch.equal(features, reference)
    assert backbone_calls and "feature cache miss: split 'train'" in caplog.text
    assert len(list(cache.rglob("train-*.safetensors"))) == 2  # the old entry stays valid for its own key


def test_labels_are_not_part_of_the_key(tmp_path, make_recipe, backbone_calls):
    """Features depend on the texts only: another label mapping reuses them (and takes its labels from the data)."""
    cache = tmp_path / "cache"
    recipe = _head_recipe(make_recipe, cache)
    _features(recipe, cache)
    backbone_calls.clear()
    _features(recipe, cache, ["data.label_names=[pos, neg]"])
    assert backbone_calls == []


@pytest.mark.parametrize("damage", ["truncate", "flip-a-byte", "bad-sidecar", "no-sidecar"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(tmp_path, make_recipe, backbone_calls, caplog, damage):
    cache = tmp_path / "cache"
    recipe = _head_recipe(make_recipe, cache)
    reference, feature_cache = _features(recipe, cache)
    path, sidecar = feature_cache.paths("train")
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip-a-byte":
        path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    elif damage == "bad-sidecar":
        sidecar.write_text("{not json")
    else:
        sidecar.unlink()
    backbone_calls.clear()
    caplog.clear()
    rebuilt, _ = _features(recipe, cache)
    assert backbone_calls, "the damaged file was served instead of recomputed"
    assert torch.equal(rebuilt, reference)
    assert path.read_bytes() == blob  # rewritten whole
    backbone_calls.clear()
    _features(recipe, cache)
    assert backbone_calls == []  # and served again


def test_cache_location_recipe_key_then_environment_then_hf_home(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv(FEATURE_CACHE_ENV, raising=False)
    default = Path(constants.HF_HOME) / "hf_transfer" / "features"
    assert feature_cache_root(None) == feature_cache_root(True) == default
    assert feature_cache_root(str(tmp_path)) == tmp_path
    assert feature_cache_root(False) is None
    monkeypatch.setenv(FEATURE_CACHE_ENV, str(tmp_path / "env"))
    assert feature_cache_root(None) == tmp_path / "env"
    assert feature_cache_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv(FEATURE_CACHE_ENV, "off")
    assert feature_cache_root(None) is None


def test_cache_off_computes_and_writes_nothing(tmp_path, make_recipe, backbone_calls):
    recipe = load_recipe(make_recipe(strategy={"kind": "head", "pooling": "mean", "feature_cache": False}))
    assert recipe.sha256() == load_recipe(_head_recipe(make_recipe, tmp_path / "c")).sha256()  # resumable anywhere
    train(recipe)
    first = len(backbone_calls)
    train(
        load_recipe(make_recipe(strategy={"kind": "head", "pooling": "mean", "feature_cache": False})), overwrite=True
    )
    assert first > 0 and len(backbone_calls) == 2 * first
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_two_ranks_share_the_cache_and_only_the_main_process_writes(tmp_path, make_recipe):
    cache = tmp_path / "cache"
    recipe = _head_recipe(make_recipe, cache)
    for run in ("cold", "warm"):
        run_two_ranks(tmp_path, "calls", recipe, tmp_path / run)
    for rank in (0, 1):
        cold, warm = (json.loads((tmp_path / run / f"calls-{rank}.json").read_text()) for run in ("cold", "warm"))
        assert cold > 0 and warm == 0, (rank, cold, warm)
    assert len(list(cache.rglob("*.safetensors"))) == 3 and not list(cache.rglob("*.tmp"))
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("cold", "warm")]
    assert metrics[0]["train"]["processes"] == 2
    assert metrics[0]["test"] == metrics[1]["test"]


@pytest.mark.parametrize("head", [{"type": "linear"}, {"type": "mlp", "hidden": 16}, {"type": "lbfgs"}], ids=str)
def test_every_head_exports_a_plain_model_that_predicts_what_the_head_did_on_features(
    tmp_path, make_recipe, monkeypatch, head
):
    from sklearn.linear_model import LogisticRegressionCV
    from transformers import AutoModelForSequenceClassification

    fitted_rows = []
    original_fit = LogisticRegressionCV.fit
    monkeypatch.setattr(
        LogisticRegressionCV, "fit", lambda self, x, y: fitted_rows.append(len(x)) or original_fit(self, x, y)
    )
    out = train(load_recipe(_head_recipe(make_recipe, tmp_path / "cache", head=head), ["training.lr=1e-2"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["head"] == head["type"]
    assert evaluate_run(out, split="test")["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    examples = json.loads((out / "run.json").read_text())["examples"]
    predicted = predict_texts(load_run(out), [e["text"] for e in examples])
    for example, prediction in zip(examples, predicted, strict=True):
        assert prediction["label"] == example["prediction"]
        assert prediction["scores"][example["prediction"]] == pytest.approx(example["score"], abs=1e-5)

    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    if head["type"] == "mlp":
        assert model.config.hf_transfer_head_hidden == 16
        assert [type(m).__name__ for m in model.classifier] == ["Linear", "GELU", "Dropout", "Linear"]
        assert model.classifier[0].out_features == 16 and metrics["train"]["trainable_params"] == 32 * 16 + 16 + 34
    else:
        assert isinstance(model.classifier, torch.nn.Linear)
    if head["type"] == "lbfgs":
        assert fitted_rows == [96]  # C is chosen on the 96 training rows only, never on validation or test
        assert metrics["train"]["steps"] == 0 and metrics["train"]["head_C"] > 0
        assert len(_log(out)) == 1
    else:
        assert fitted_rows == [] and metrics["train"]["steps"] == 24


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("classes", [2, 3])
def test_lbfgs_head_computes_exactly_the_fitted_scikit_learn_probabilities(classes, monkeypatch):
    from datasets import Dataset
    from sklearn.linear_model import LogisticRegressionCV

    from hf_transfer.features import fit_logistic_head
    from hf_transfer.recipe import HeadConfig

    fitted = []
    original_fit = LogisticRegressionCV.fit
    monkeypatch.setattr(
        LogisticRegressionCV, "fit", lambda self, x, y: fitted.append(self) or original_fit(self, x, y)
    )
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % classes
    features = torch.randn(90, 6, generator=generator) + labels[:, None] * torch.linspace(-1, 1, 6)
    split = Dataset.from_dict({"features": features.numpy(), "labels": labels.numpy()}).with_format("torch")
    classifier = torch.nn.Linear(6, classes)
    head = HeadConfig(type="lbfgs", C=[0.01, 1.0, 100.0])
    chosen = fit_logistic_head(Accelerator(cpu=True), classifier, split, head)
    assert chosen["C"] in (0.01, 1.0, 100.0) and len(fitted) == 1
    with torch.no_grad():
        ours = torch.softmax(classifier(features), dim=-1).numpy()
    assert ours.shape == (90, classes)
    assert abs(ours - fitted[0].predict_proba(features.double().numpy())).max() < 1e-6


@pytest.mark.parametrize("metric, scoring", [("accuracy", "accuracy"), ("mse", "neg_log_loss")])
def test_lbfgs_chooses_C_by_the_runs_own_metric(metric, scoring):
    """C is picked by cross-validated accuracy when the run selects on accuracy (as a hand-written
    LogisticRegressionCV does by default), and by log loss when scikit-learn has no scorer for the run's metric."""
    import warnings

    from datasets import Dataset
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    from hf_transfer.features import fit_logistic_head
    from hf_transfer.recipe import HeadConfig

    grid = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    labels = torch.arange(90) % 2
    features = torch.randn(90, 6, generator=torch.Generator().manual_seed(0)) + labels[:, None] * torch.linspace(
        -1, 1, 6
    )
    split = Dataset.from_dict({"features": features.numpy(), "labels": labels.numpy()}).with_format("torch")
    chosen = fit_logistic_head(
        Accelerator(cpu=True), torch.nn.Linear(6, 2), split, HeadConfig(type="lbfgs", C=grid), metric=metric
    )
    by_scorer = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name in ("accuracy", "neg_log_loss"):
            model = LogisticRegressionCV(Cs=grid, cv=StratifiedKFold(5), scoring=name, max_iter=1000)
            by_scorer[name] = float(model.fit(features.double().numpy(), labels.numpy()).C_[0])
    assert by_scorer["accuracy"] != by_scorer["neg_log_loss"]  # the data tells the two scorers apart
    assert chosen["C"] == by_scorer[scoring]


@pytest.mark.parametrize(
    "strategy, message",
    [
        ({"kind": "full", "head": {"type": "lbfgs"}}, r"'strategy.head.type' 'lbfgs' fits frozen features"),
        ({"kind": "head", "head": {"type": "linear", "hidden": 8}}, r"'strategy.head.hidden' applies to type 'mlp'"),
        ({"kind": "head", "head": {"type": "mlp", "C": 1}}, r"'strategy.head.C' applies to type 'lbfgs'"),
        ({"kind": "head", "head": {"type": "lbfgs", "C": 0}}, r"strategy.head.C = 0 is invalid"),
        ({"kind": "head", "head": {"type": "mlp"}, "pooling": "pooler"}, r"strategy.head.type = 'mlp' needs"),
    ],
)
def test_head_keys_are_validated_naming_the_key(make_recipe, strategy, message):
    with pytest.raises(ValueError, match=message):
        train(load_recipe(make_recipe(strategy=strategy)))


@pytest.mark.parametrize(
    "strategy, normalized",
    [
        ({"kind": "head", "head": {"type": "lbfgs"}}, True),  # MiniLM's own mean pooling, then its Normalize
        ({"kind": "head", "head": {"type": "lbfgs"}, "normalize": False}, False),
        ({"kind": "head", "head": {"type": "lbfgs"}, "pooling": "cls"}, False),  # not the checkpoint's embedding
        ({"kind": "head"}, False),  # a head trained by gradient steps keeps the raw scale its learning rate suits
        ({"kind": "head", "normalize": True}, True),
        ({"kind": "full", "pooling": "mean"}, False),  # fine-tuning: only when the recipe asks
        ({"kind": "full", "pooling": "cls", "normalize": True}, True),
    ],
    ids=["lbfgs", "lbfgs-off", "lbfgs-cls", "linear", "linear-asked", "full-mean", "full-asked"],
)
def test_minilm_head_features_are_its_own_unit_length_sentence_embeddings(
    tmp_path, sentiment_folder, strategy, normalized
):
    from conftest import minilm_path, recipe_yaml

    recipe = load_recipe(
        recipe_yaml(tmp_path / "r.yaml", minilm_path(), sentiment_folder, tmp_path / "out", strategy=strategy)
    )
    pooling = choose_pooling(recipe, minilm_path())
    model = build_model(recipe, str(minilm_path()), {0: "neg", 1: "pos"}, pooling).eval()
    tokenizer = load_tokenizer(str(minilm_path()), recipe)
    batch = tokenizer(["a stirring, funny film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
        pooled = model.pool(hidden, batch["attention_mask"])
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1)
    norms = pooled.norm(dim=-1)
    assert bool(getattr(model.config, "hf_transfer_normalize", False)) is normalized
    if normalized:
        assert torch.allclose(norms, torch.ones(2), atol=1e-5)
        if pooling == "mean":
            assert torch.allclose(pooled, torch.nn.functional.normalize(mean, dim=-1), atol=1e-6)
    else:
        assert not torch.allclose(norms, torch.ones(2), atol=1e-2)


def test_normalize_needs_a_pooled_head(make_recipe, tiny_bert):
    from hf_transfer.errors import RecipeError

    recipe = load_recipe(make_recipe(strategy={"kind": "head", "normalize": True}))
    with pytest.raises(RecipeError, match=r"strategy.normalize = true needs strategy.pooling 'mean' or 'cls'"):
        build_model(recipe, str(tiny_bert), {0: "neg", 1: "pos"}, choose_pooling(recipe, tiny_bert))
