"""Security defaults: repository model code runs only when the recipe says so, or for hf_transfer's own folder."""

import json
import shutil

import pytest

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


def test_a_pooled_folder_is_trusted_only_when_hf_transfer_wrote_it(make_recipe, tmp_path, monkeypatch):
    out = train(load_recipe(make_recipe(strategy={"kind": "head", "pooling": "mean"})))
    assert type(load_run(out).model).__name__ == "PooledModelForSequenceClassification"
    # The same folder with its provenance removed (e.g. downloaded from someone else) is no longer trusted,
    # and the modeling file — here one that would leave a marker — never runs.
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("HF_TRANSFER_TEST_MARKER", str(marker))
    modeling = out / "modeling_hf_transfer.py"
    modeling.write_text(
        "import os, pathlib\npathlib.Path(os.environ['HF_TRANSFER_TEST_MARKER']).write_text('ran')\n"
        + modeling.read_text()
    )
    run = json.loads((out / "run.json").read_text())
    run.pop("produced_by")
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_run(out)
    assert not marker.exists()
