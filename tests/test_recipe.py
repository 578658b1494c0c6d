"""Recipes: every bundled recipe validates; overrides parse like YAML; every error names the key, value and file."""

from pathlib import Path

import pytest
import yaml

from hf_transfer.recipe import Recipe, RecipeError, load_recipe, parse_override, recipe_json_schema

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "recipes").glob("*.yaml"))


def test_bundled_recipes_exist():
    names = {p.name for p in BUNDLED}
    assert {"bbc-news-minilm-head.yaml", "banking77-minilm-lora.yaml"} <= names
    assert {f"sst2-minilm-{kind}.yaml" for kind in ("head", "partial", "lora", "full")} <= names
    assert any(yaml.safe_load(p.read_text())["data"].get("text_pair_column") for p in BUNDLED)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_recipe_validates_and_opens_with_its_launch_command(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line == f"# accelerate launch -m hf_transfer train recipes/{path.name}"
    header = "".join(line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
    assert recipe.strategy.kind in path.name or recipe.strategy.kind in header  # the few-shot recipe says it below


def test_sst2_recipes_use_the_sentence_level_split():
    for kind in ("head", "partial", "lora", "full"):
        recipe = load_recipe(ROOT / "recipes" / f"sst2-minilm-{kind}.yaml")
        assert recipe.data.source == "SetFit/sst2"
        assert recipe.strategy.kind == kind


def test_overrides_are_applied_and_numbers_are_numbers():
    recipe = load_recipe(
        ROOT / "recipes/sst2-minilm-lora.yaml",
        ["training.lr=3e-5", "strategy.kind=full", "training.epochs=1", "data.config=1.0"],
        output_dir="outputs/x",
    )
    assert recipe.training.lr == pytest.approx(3e-5)
    assert recipe.strategy.kind == "full"
    assert recipe.training.epochs == 1
    assert recipe.data.config == "1.0"  # a string field keeps the text typed
    assert recipe.training.output_dir == "outputs/x"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training.lr=3e-5", (["training", "lr"], 3e-5)),
        ("training.lr=1E-4", (["training", "lr"], 1e-4)),
        ("training.epochs=2", (["training", "epochs"], 2)),
        ("strategy.target_modules=[query, value]", (["strategy", "target_modules"], ["query", "value"])),
        ("hub.private=true", (["hub", "private"], True)),
        ("model=org/name", (["model"], "org/name")),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


BASE = {"model": "org/model", "data": {"source": "org/data"}}


@pytest.mark.parametrize(
    "tree, must_mention",
    [
        ({**BASE, "trainig": {}}, ["trainig", "unknown key"]),
        ({**BASE, "training": {"lr": "fast"}}, ["training.lr", "'fast'"]),
        ({**BASE, "training": {"epochs": 0}}, ["training.epochs", "0"]),
        (
            {**BASE, "strategy": {"kind": "lorra"}},
            ["strategy.kind", "'lorra'", "'head'", "'partial'", "'lora'", "'full'"],
        ),
        ({**BASE, "task": "translation"}, ["task", "'translation'", "'text-classification'"]),
        ({"data": {"source": "x"}}, ["model", "missing"]),
        ({**BASE, "data": {"text_column": "t"}}, ["data.source", "missing"]),
        ({**BASE, "strategy": {"kind": "lora", "layers": 2}}, ["strategy", "layers", "partial"]),
        ({**BASE, "data": {"source": "x", "files": {"dev": "a.csv", "train": "b.csv"}}}, ["data.files", "dev"]),
        ({**BASE, "training": {"scheduler": "exp"}}, ["training.scheduler", "'exp'", "'cosine'"]),
        ({**BASE, "data": {"source": "x", "validation_fraction": 1.5}}, ["data.validation_fraction", "1.5"]),
    ],
)
def test_recipe_errors_name_key_value_and_file(tmp_path, tree, must_mention):
    path = _write(tmp_path, tree)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert str(path) in message
    for fragment in must_mention:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_override_errors_name_the_override(tmp_path):
    path = _write(tmp_path, BASE)
    with pytest.raises(RecipeError, match="training.lr"):
        load_recipe(path, ["training.lr=abc"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["training.lr"])
    with pytest.raises(RecipeError, match="model is not a section"):
        load_recipe(path, ["model.name=x"])


def test_file_level_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(listing)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\ndata: {source: x}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(evil)


def test_resolved_recipe_round_trips_and_hash_is_stable(tmp_path):
    recipe = load_recipe(ROOT / "recipes/sst2-minilm-lora.yaml")
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml(), encoding="utf-8")
    assert load_recipe(again) == recipe
    assert load_recipe(again).sha256() == recipe.sha256()
    assert load_recipe(again, ["training.seed=1"]).sha256() != recipe.sha256()


def test_json_schema_lists_strategies_and_forbids_unknown_keys():
    schema = recipe_json_schema()
    strategy = schema["$defs"]["StrategyConfig"]
    assert strategy["properties"]["kind"]["enum"] == ["head", "partial", "lora", "full", "contrastive"]
    assert strategy["additionalProperties"] is False
    assert "model" in schema["required"]


def test_trust_remote_code_and_pickle_are_off_by_default():
    recipe = load_recipe(ROOT / "recipes/bbc-news-minilm-head.yaml")
    assert recipe.trust_remote_code is False
    assert recipe.allow_pickle is False
