"""End to end on a tiny BERT: the exact output folder, metrics contract, strategies' saved weights, resume, safety."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import python_env, write_csv
from safetensors.torch import load_file

from hf_transfer.checkpoints import ResumeError
from hf_transfer.errors import OutputDirError
from hf_transfer.inference import evaluate_run, load_run, predict_texts
from hf_transfer.recipe import load_recipe
from hf_transfer.train import train

CARD_AND_METADATA = {"README.md", "recipe.yaml", "metrics.json", "run.json", "train_log.jsonl", "confusion_matrix.png"}
TOKENIZER = {"tokenizer.json", "tokenizer_config.json"}


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_bert, sentiment_folder):
    from conftest import recipe_yaml

    tmp = tmp_path_factory.mktemp("full")
    path = recipe_yaml(tmp / "r.yaml", tiny_bert, sentiment_folder, tmp / "out", training={"epochs": 3})
    return train(load_recipe(path))


def test_full_run_writes_exactly_the_documented_folder(full_run):
    marker = ".hf_transfer-run"  # written first: the folder is hf_transfer's, so --overwrite may clear it
    expected = {"config.json", "model.safetensors", "checkpoints", marker} | TOKENIZER | CARD_AND_METADATA
    assert _files(full_run) == expected
    checkpoints = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and all(name.startswith("step-") for name in checkpoints)  # save_total_limit: 2


def test_metrics_json_contract(full_run):
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test", "train"}
    for split in ("validation", "test"):
        assert all(isinstance(v, float) for k, v in metrics[split].items() if k != "examples")
        assert metrics[split]["examples"] == 24
        assert {"accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro", "mcc"} <= set(metrics[split])
    train_info = metrics["train"]
    assert train_info["processes"] == 1 and train_info["strategy"] == "full"
    assert train_info["trainable_params"] == train_info["total_params"] > 0
    assert train_info["samples_per_s"] > 0 and train_info["wall_s"] > 0
    assert metrics["test"]["accuracy"] >= 0.75, metrics  # one sentiment word decides the label


def test_run_json_and_card_carry_hub_ids_never_local_paths(full_run, tiny_bert):
    run = json.loads((full_run / "run.json").read_text())
    assert run["id2label"] == {"0": "neg", "1": "pos"}
    assert run["dataset"]["splits"] == {"train": 96, "validation": 24, "test": 24}
    assert len(run["examples"]) == 5 and {"text", "label", "prediction", "score"} <= set(run["examples"][0])
    for name in ("config.json", "tokenizer_config.json", "README.md"):
        assert str(tiny_bert) not in (full_run / name).read_text(), name
    config = json.loads((full_run / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}


def test_predict_and_evaluate_from_the_folder(full_run):
    run = load_run(full_run)
    results = predict_texts(run, ["a wonderful wonderful film", "a dreadful dreadful plot"])
    assert [r["label"] for r in results] == ["pos", "neg"]
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 for r in results)
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert evaluate_run(full_run, split="test")["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_existing_output_folder_is_never_overwritten_silently(full_run):
    recipe = load_recipe(full_run / "recipe.yaml")
    before = (full_run / "model.safetensors").read_bytes()
    with pytest.raises(OutputDirError, match="already holds files; pass --overwrite"):
        train(recipe)
    assert (full_run / "model.safetensors").read_bytes() == before


def test_exact_resume_from_a_mid_run_checkpoint(tmp_path, make_recipe):
    path = make_recipe(training={"epochs": 2, "eval_every": 5, "save_total_limit": 10})
    finished = train(load_recipe(path))
    resumed = tmp_path / "resumed"
    shutil.copytree(finished / "checkpoints", resumed / "checkpoints")
    names = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert names == [
        "step-00000005",
        "step-00000010",
        "step-00000012",
        "step-00000015",
        "step-00000020",
        "step-00000024",
    ]
    for name in names[-2:]:  # as if killed at step 22: the newest checkpoint is step 20, mid-epoch 2
        shutil.rmtree(resumed / "checkpoints" / name)
    with pytest.raises(ResumeError, match="different recipe"):
        train(load_recipe(path, ["training.lr=5e-4"], output_dir=str(resumed)), resume=True)
    train(load_recipe(path, output_dir=str(resumed)), resume=True)
    resumed_weights = load_file(str(resumed / "model.safetensors"))
    reference = load_file(str(finished / "model.safetensors"))
    assert resumed_weights.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed_weights[name], reference[name]), name  # bit-identical on CPU
    assert (
        json.loads((resumed / "metrics.json").read_text())["test"]
        == json.loads((finished / "metrics.json").read_text())["test"]
    )


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, make_recipe, caplog):
    path = make_recipe(training={"epochs": 2, "save_total_limit": 3})
    finished = train(load_recipe(path))
    newest = sorted((finished / "checkpoints").iterdir())[-1]
    (newest / "model.safetensors").write_bytes(b"truncated")
    for name in [p.name for p in finished.iterdir() if p.name != "checkpoints"]:
        target = finished / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    train(load_recipe(path), resume=True)
    assert "falling back to the previous one" in caplog.text
    assert (finished / "model.safetensors").is_file()


def test_partial_run_saves_frozen_weights_unchanged(tmp_path, make_recipe, tiny_bert):
    out = train(load_recipe(make_recipe(strategy={"kind": "partial", "layers": 1})))
    saved, base = load_file(str(out / "model.safetensors")), load_file(str(tiny_bert / "model.safetensors"))
    base = {k if k.startswith("bert.") else f"bert.{k}": v for k, v in base.items()}
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        assert torch.equal(saved[name], base[name]), name
    assert not torch.equal(
        saved["bert.encoder.layer.1.output.dense.weight"], base["bert.encoder.layer.1.output.dense.weight"]
    )
    assert json.loads((out / "metrics.json").read_text())["train"]["trainable_params"] < 10_000


def test_lora_run_saves_adapter_and_an_equivalent_merged_model(tmp_path, make_recipe, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = train(load_recipe(make_recipe(strategy={"kind": "lora", "r": 4}, training={"lr": 5e-3})))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= _files(out / "adapter")
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_bert.name
    assert {"classifier", "pooler"} <= set(adapter_config["modules_to_save"])
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    with_adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    batch = AutoTokenizer.from_pretrained(out)(["a great film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, with_adapter(**batch).logits, atol=1e-5)


def test_mean_pooled_head_loads_with_plain_transformers_without_hf_transfer(tmp_path, make_recipe):
    out = train(load_recipe(make_recipe(strategy={"kind": "head", "pooling": "mean"}, training={"lr": 1e-2})))
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_hf_transfer.")
    assert (out / "modeling_hf_transfer.py").is_file()
    # The head trained on cached features; the saved full model, run on text, scores the test split the same way.
    cached = json.loads((out / "metrics.json").read_text())["test"]
    assert evaluate_run(out, split="test")["accuracy"] == pytest.approx(cached["accuracy"])
    ours = predict_texts(load_run(out), ["a great film"])[0]["scores"]
    script = (
        "import sys, json; sys.modules['hf_transfer'] = None\n"  # prove the folder needs no hf_transfer
        "from transformers import pipeline\n"
        f"pipe = pipeline('text-classification', model={str(out)!r}, trust_remote_code=True, top_k=None)\n"
        "print(json.dumps({d['label']: d['score'] for d in pipe(['a great film'])[0]}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=python_env(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    assert theirs.keys() == ours.keys()
    assert all(abs(theirs[k] - ours[k]) < 1e-5 for k in ours)


def test_mean_pooled_lora_run_saves_its_own_architecture_and_predicts_as_trained(tmp_path, make_recipe):
    """A LoRA run on the pooled head merges into the pooled architecture: the folder must say so (auto_map and the
    modeling file), or transformers would load its own class with a CLS head and an untrained pooler."""
    recipe = make_recipe(strategy={"kind": "lora", "r": 4, "pooling": "mean"}, training={"lr": 5e-3})
    out = train(load_recipe(recipe))
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_hf_transfer.")
    assert (out / "modeling_hf_transfer.py").is_file()
    run = load_run(out)
    assert type(run.model).__name__ == "PooledModelForSequenceClassification"
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert evaluate_run(out, split="test")["accuracy"] == pytest.approx(saved["accuracy"])


def test_multi_label_and_regression_runs(tmp_path, tiny_bert):
    from conftest import recipe_yaml

    rows = [
        {
            "text": f"{'sport ' if i % 2 else ''}{'money ' if i % 3 else ''}news {i}",
            "label": (["sports"] if i % 2 else []) + (["business"] if i % 3 else []),
        }
        for i in range(60)
    ]
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    ml = train(
        load_recipe(
            recipe_yaml(
                tmp_path / "ml.yaml",
                tiny_bert,
                tmp_path / "ml",
                tmp_path / "ml-out",
                task="multi-label-classification",
            )
        )
    )
    assert "f1_macro" in json.loads((ml / "metrics.json").read_text())["validation"]
    result = predict_texts(load_run(ml), ["sport money news"])[0]
    assert set(result["scores"]) == {"business", "sports"} and isinstance(result["label"], list)

    (tmp_path / "reg").mkdir()
    write_csv(tmp_path / "reg" / "train.csv", [(f"{'great ' * (i % 4)}film", i % 4 / 3) for i in range(60)])
    reg = train(
        load_recipe(
            recipe_yaml(
                tmp_path / "reg.yaml", tiny_bert, tmp_path / "reg", tmp_path / "reg-out", task="text-regression"
            )
        )
    )
    metrics = json.loads((reg / "metrics.json").read_text())["validation"]
    assert {"mse", "mae", "pearson", "spearman"} <= set(metrics)
    assert isinstance(predict_texts(load_run(reg), ["great film"])[0]["score"], float)


def test_pickle_only_checkpoint_is_refused(tmp_path, make_recipe, tiny_bert):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert, pickled)
    state = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    recipe = load_recipe(make_recipe(), [f"model={pickled}"])
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle: true"):
        train(recipe)
