"""Security defaults: repository model code runs only when the recipe says so, or for hf_transfer's own folder."""

import json
import logging
import shutil
import subprocess
import sys

import pytest

from hf_transfer.errors import SourceError
from hf_transfer.inference import load_run
from hf_transfer.recipe import load_recipe, recipe_from_dict
from hf_transfer.tasks import build_model
from hf_transfer.train import train

CUSTOM_CODE = """
import os
import pathlib

from transformers import BertConfig, BertForSequenceClassification

pathlib.Path(os.environ["HF_TRANSFER_TEST_MARKER"]).write_text("model code ran")


class MarkerConfig(BertConfig):
    model_type = "hf-transfer-test-marker"


class MarkerForSequenceClassification(BertForSequenceClassification):
    config_class = MarkerConfig
"""


@pytest.fixture
def custom_code_model(tmp_path, tiny_bert, monkeypatch):
    """The tiny BERT re-declared as an architecture that exists only as code inside the model folder."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "hf-transfer-test-marker"
    config["auto_map"] = {
        "AutoConfig": "custom_model.MarkerConfig",
        "AutoModelForSequenceClassification": "custom_model.MarkerForSequenceClassification",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom_model.py").write_text(CUSTOM_CODE)
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("HF_TRANSFER_TEST_MARKER", str(marker))
    return folder, marker


def _recipe(model, trust: bool):
    return recipe_from_dict(
        {"model": str(model), "data": {"source": "x", "max_length": 32}, "trust_remote_code": trust}
    )


def test_repository_code_never_runs_unless_the_recipe_asks(custom_code_model):
    folder, marker = custom_code_model
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_model(_recipe(folder, trust=False), str(folder), {0: "a", 1: "b"}, "pooler")
    assert not marker.exists()
    model = build_model(_recipe(folder, trust=True), str(folder), {0: "a", 1: "b"}, "pooler")
    assert type(model).__name__ == "MarkerForSequenceClassification" and marker.exists()


def test_a_pooled_folder_is_trusted_by_its_modeling_file_not_by_its_provenance(make_recipe, tmp_path, monkeypatch):
    out = train(load_recipe(make_recipe(strategy={"kind": "head", "pooling": "mean"})))
    assert type(load_run(out).model).__name__ == "PooledModelForSequenceClassification"
    # Provenance removed (an older folder, or one copied from elsewhere): the file is still hf_transfer's own.
    run = json.loads((out / "run.json").read_text())
    run.pop("produced_by")
    (out / "run.json").write_text(json.dumps(run))
    assert type(load_run(out).model).__name__ == "PooledModelForSequenceClassification"
    # The same folder with a modeling file that would leave a marker is refused, and that file never runs.
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("HF_TRANSFER_TEST_MARKER", str(marker))
    modeling = out / "modeling_hf_transfer.py"
    modeling.write_text(
        "import os, pathlib\npathlib.Path(os.environ['HF_TRANSFER_TEST_MARKER']).write_text('ran')\n"
        + modeling.read_text()
    )
    with pytest.raises(SourceError, match="modeling_hf_transfer.py is not the file this hf_transfer writes"):
        load_run(out)
    assert not marker.exists()


# -- a loader named by an output folder's own recipe is never imported -----------------------------------------------

PLANTED_LOADER = """
import pathlib

from datasets import Dataset, DatasetDict

pathlib.Path({marker!r}).write_text("planted loader ran")
ROWS = {rows!r}


def load():
    split = {{"text": [text for text, _ in ROWS], "label": [label for _, label in ROWS]}}
    return DatasetDict({{"train": Dataset.from_dict(split), "test": Dataset.from_dict(split)}})
"""


@pytest.fixture
def folder_with_planted_loader(tmp_path, tiny_bert):
    """An output folder whose own recipe names `planted_module:load`, planted_module.py lying beside it."""
    from conftest import sentiment_rows
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = tmp_path / "downloaded-run"
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    BertForSequenceClassification.from_pretrained(tiny_bert, **labels).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    recipe = recipe_from_dict({"model": "org/tiny-bert", "data": {"source": "planted_module:load", "max_length": 32}})
    (folder / "recipe.yaml").write_text(recipe.to_yaml())
    marker = tmp_path / "loader-ran"
    (folder / "planted_module.py").write_text(PLANTED_LOADER.format(marker=str(marker), rows=sentiment_rows(24, 5)))
    return folder, marker


def _evaluate(folder, *extra):
    from conftest import python_env

    command = [sys.executable, "-m", "hf_transfer", "evaluate", ".", *extra]
    # Run from inside the folder: `python -m` puts the current folder first on sys.path, so the plant is importable.
    return subprocess.run(command, cwd=folder, env=python_env(), capture_output=True, text=True, timeout=600)


def test_evaluate_never_imports_a_loader_named_only_by_the_folders_own_recipe(folder_with_planted_loader):
    folder, marker = folder_with_planted_loader

    refused = _evaluate(folder)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines() == [
        "error: recipe.yaml: data.source 'planted_module:load' is Python code (module:function) named by the output "
        "folder itself, so it is not imported. If you trust it, name it yourself: --data-source planted_module:load "
        "(or score a labelled file with --file)."
    ]
    assert not marker.exists()

    # Named on the command line, it is the user's own choice: imported and scored.
    trusted = _evaluate(folder, "--data-source", "planted_module:load")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.exists() and 0 <= json.loads(trusted.stdout)["accuracy"] <= 1


# -- nothing outside the output folder travels ------------------------------------------------------------------------

SECRET = b"the contents of a file outside the output folder"


@pytest.fixture
def folder_reaching_out(tmp_path):
    """An image output folder whose records and links point outside it: absolute paths, `..`, symlinks out."""
    import transformers
    from PIL import Image

    outside = tmp_path / "outside"
    (outside / "adapter").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside / "secret.png")
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "adapter" / "adapter_config.json").write_text(json.dumps({"secret": SECRET.decode()}))
    (outside / "adapter" / "adapter_model.safetensors").write_bytes(SECRET)

    folder = tmp_path / "run"
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "examples").mkdir()
    Image.new("RGB", (8, 8), (200, 100, 0)).save(folder / "examples" / "0.png")
    (folder / "examples" / "link.png").symlink_to(outside / "secret.png")
    (folder / "notes.txt").symlink_to(outside / "secret.txt")
    (folder / "strategy_comparison.md").symlink_to(outside / "secret.txt")
    (folder / "adapter").symlink_to(outside / "adapter")
    examples = ["examples/0.png", "../outside/secret.png", str(outside / "secret.png"), "examples/link.png"]
    written = {"file": str(tmp_path / "mine.yaml"), "text": f"model: {tmp_path}/models/vit\n", "overrides": []}
    run = {
        "task": "image-classification",
        "pipeline_tag": "image-classification",
        "strategy": "full",
        "base_model": "org/vit",
        "model_source": {"kind": "local", "hub_id": None},
        "dataset": {"id": "photos", "source_kind": "local"},
        "examples": [{"image": path, "label": "a", "prediction": "a", "score": 0.5} for path in examples],
        "recipe_as_written": written,
    }
    (folder / "run.json").write_text(json.dumps(run))
    return folder, examples


def test_publishing_uploads_nothing_from_outside_the_folder(folder_reaching_out, local_hub, tmp_path, caplog):
    from hub_server import hub_env, run_client
    from test_hub import PUBLISH

    from hf_transfer.hub import publish_files
    from hf_transfer.space import render_space_files

    folder, examples = folder_reaching_out
    calls = [{"output_dir": str(folder), "repo_id": "me/photos", "space": "me/photos-demo"}]
    [result] = run_client(PUBLISH, hub_env(local_hub, tmp_path), json.dumps(calls), cwd=tmp_path)
    assert "error" not in result, result

    model, space = local_hub.files("me/photos"), local_hub.files("me/photos-demo", "space")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "run.json", "README.md"} <= set(model)
    assert not {"notes.txt", "strategy_comparison.md", "adapter_config.json", "adapter_model.safetensors"} & set(model)
    assert json.loads(space["examples.json"]) == ["examples/0.png"]
    assert space["examples/0.png"] == (folder / "examples" / "0.png").read_bytes()
    secret_png = (tmp_path / "outside" / "secret.png").read_bytes()
    for path, data in {**model, **{f"space/{p}": d for p, d in space.items()}}.items():
        assert SECRET not in data and secret_png not in data, path
        assert str(tmp_path).encode() not in data, path  # no local path either (run.json's recipe_as_written)
    card = model["README.md"].decode()
    assert "`examples/0.png`" in card and "secret" not in card and "Strategy comparison" not in card

    # Each path that leads out is named in a warning when it is skipped.
    caplog.set_level(logging.WARNING, logger="hf_transfer")
    assert set(publish_files(folder, adapter=True)) == set(publish_files(folder, adapter=False)) - {
        "model.safetensors"
    }
    render_space_files("me/photos", folder)
    warned = caplog.text
    for path in [*examples[1:], "notes.txt", "strategy_comparison.md"]:
        assert repr(path) in warned, path
