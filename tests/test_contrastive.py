"""The few-shot strategy `contrastive`: its recipe rules, its class-block batches, and end to end on a tiny BERT —
the encoder moves, the head is the L-BFGS fit, the output folder predicts exactly as the in-memory model, resume is
exact, and two processes train what one does."""

import json
import shutil
import subprocess

import pytest
import torch
from conftest import ACCELERATE_CPU_LAUNCH, python_env, recipe_yaml, save_tiny_bert
from safetensors.torch import load_file

from hf_transfer.contrastive import ClassBlockSampler, epoch_rows
from hf_transfer.errors import RecipeError, StrategyError
from hf_transfer.inference import load_run, predict_texts
from hf_transfer.recipe import load_recipe
from hf_transfer.train import finish, fit, set_up, train

CONTRASTIVE = {"kind": "contrastive", "pooling": "mean"}
TRAINING = {"epochs": 3, "batch_size": 8, "lr": 1e-3, "warmup": 0, "save_total_limit": 10}


@pytest.fixture(scope="module")
def dropout_free_bert(tmp_path_factory):
    """Per-rank dropout masks never match one process's: the parity run needs a model without dropout."""
    folder = tmp_path_factory.mktemp("bert-no-dropout")
    return save_tiny_bert(folder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _recipe(tmp_path, model, folder, name="r.yaml", strategy=None, training=None, data=None):
    return recipe_yaml(
        tmp_path / name,
        model,
        folder,
        tmp_path / "out",
        strategy={**CONTRASTIVE, **(strategy or {})},
        training={**TRAINING, **(training or {})},
        data={"max_length": 32, **(data or {})},
    )


# ---------------------------------------------------------------- recipe rules


def test_the_head_defaults_to_lbfgs_and_other_heads_are_refused(tmp_path, sentiment_folder):
    recipe = load_recipe(_recipe(tmp_path, "m", sentiment_folder))
    assert recipe.strategy.head.type == "lbfgs"
    assert load_recipe(_recipe(tmp_path, "m", sentiment_folder, strategy={"head": {"C": 1.0}})).strategy.head.C == 1.0
    with pytest.raises(RecipeError, match="kind 'contrastive' fits its head with L-BFGS"):
        load_recipe(_recipe(tmp_path, "m", sentiment_folder, strategy={"head": {"type": "linear"}}))


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"kind": "lora", "loss": "pairs"}, "'strategy.loss' applies to kind 'contrastive' only, not 'lora'"),
        ({"kind": "full", "class_block": 2}, "'strategy.class_block' applies to kind 'contrastive' only"),
        ({"kind": "contrastive", "unfreeze_every": 1}, "'strategy.unfreeze_every' applies to kinds 'partial', 'lora'"),
        ({"kind": "contrastive", "class_block": 1}, "greater than or equal to 2"),
        ({"kind": "contrastive", "loss": "infonce"}, "'triplet' or 'pairs'"),
    ],
)
def test_contrastive_keys_are_checked_where_they_are_written(tmp_path, sentiment_folder, strategy, message):
    path = recipe_yaml(tmp_path / "r.yaml", "m", sentiment_folder, tmp_path / "out", strategy=strategy)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"strategy": {"pooling": "pooler"}}, RecipeError, "set strategy.pooling to 'mean' or 'cls'"),
        ({"training": {"eval_every": 2}}, StrategyError, "training.eval_every does not apply to strategy.kind"),
        ({"training": {"batch_size": 6}}, StrategyError, "strategy.class_block = 4 must divide the batch of 6 rows"),
        ({"training": {"batch_size": 4}}, StrategyError, "holds one class only"),
    ],
)
def test_what_the_strategy_cannot_train_fails_before_anything_trains(
    tmp_path, tiny_bert, sentiment_folder, change, error, message
):
    path = _recipe(tmp_path, tiny_bert, sentiment_folder, **change)
    with pytest.raises(error, match=message):
        train(load_recipe(path))
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------- batches


def test_class_blocks_give_every_batch_rows_of_its_own_class_and_of_others():
    labels = [0] * 10 + [1] * 7 + [2] * 3
    sampler = ClassBlockSampler(labels, block=4, rows=48, generator=torch.Generator().manual_seed(3))
    order = list(sampler)
    assert len(order) == len(sampler) == 48  # strategy.epoch_rows: small data cycles again
    blocks = [order[i : i + 4] for i in range(0, 48, 4)]
    assert all(len({labels[i] for i in block}) == 1 for block in blocks)  # a block is one class
    batches = [order[i : i + 8] for i in range(0, 48, 8)]
    assert sum(len({labels[i] for i in batch}) > 1 for batch in batches) >= 4
    assert set(order) == set(range(20))  # every row is drawn
    again = ClassBlockSampler(labels, block=4, rows=48, generator=torch.Generator().manual_seed(3))
    assert list(again) == order
    assert list(ClassBlockSampler(labels, 4, 48, torch.Generator().manual_seed(4))) != order
    fewer = list(ClassBlockSampler(labels, 4, 8, torch.Generator().manual_seed(3)))  # a large split is sampled
    assert len(fewer) == 8 and len(set(fewer)) == 8
    assert epoch_rows(256, 20) == 200 and epoch_rows(256, 616) == 256 and epoch_rows(None, 20) is None
    one_pass = list(ClassBlockSampler(labels, 4, None, torch.Generator().manual_seed(3)))
    assert len(one_pass) == 24 and set(one_pass) == set(range(20))  # 7 and 3 rows fill blocks of 4 from their class


# ---------------------------------------------------------------- end to end


def test_the_encoder_moves_the_head_is_fitted_and_the_folder_predicts_as_the_model(
    tmp_path, tiny_bert, sentiment_folder
):
    recipe = load_recipe(_recipe(tmp_path, tiny_bert, sentiment_folder, data={"samples_per_class": 12}))
    run = set_up(recipe, overwrite=False, resume=False)
    fit(run)
    out = finish(run)
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "run.json").read_text())
    assert metrics["train"]["strategy"] == "contrastive" and metrics["train"]["head"] == "lbfgs"
    assert metrics["train"]["selects_best"] is False and metrics["train"]["epochs_run"] == 3
    assert metrics["train"]["steps"] == 3 * 30  # 24 rows cycled 10 times an epoch (not 256) in batches of 8
    assert metrics["train"]["head_C"] > 0
    assert record["dataset"]["samples_per_class"]["rows"] == 24
    assert record["dataset"]["splits"]["train"] == 24 and record["pooling"] == "mean"
    assert metrics["test"]["accuracy"] >= 0.75  # one sentiment word decides the label; chance is 0.5

    saved = load_file(str(out / "model.safetensors"))
    base = load_file(str(tiny_bert / "model.safetensors"))
    moved = [n for n in base if f"bert.{n}" in saved and not torch.allclose(saved[f"bert.{n}"], base[n])]
    assert len(moved) >= len([n for n in base if "encoder.layer" in n]) // 2, "the encoder did not train"

    texts = [line.split(",")[0] for line in (sentiment_folder / "test.csv").read_text().splitlines()[1:]]
    model, tokenizer = run.fit.saved_model.eval(), run.preprocessor
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        in_memory = torch.softmax(model(**batch).logits, dim=-1)
    loaded = predict_texts(load_run(out, trust_remote_code=True), texts)
    from_folder = torch.tensor([[r["scores"]["neg"], r["scores"]["pos"]] for r in loaded])
    assert torch.allclose(from_folder, in_memory, atol=1e-5)

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out), trust_remote_code=True)
    assert [p["label"] for p in classify(texts[:6])] == [r["label"] for r in loaded[:6]]


def test_lora_adapts_the_encoder_and_the_adapter_holds_the_fitted_head(tmp_path, tiny_bert, sentiment_folder):
    path = _recipe(tmp_path, tiny_bert, sentiment_folder, strategy={"r": 4}, data={"samples_per_class": 12})
    out = train(load_recipe(path))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["trainable_params"] < metrics["train"]["total_params"] // 10
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in n and t.abs().max() > 0 for n, t in adapter.items())  # B starts at zero: it trained
    merged = load_file(str(out / "model.safetensors"))
    head = [n for n in adapter if "classifier" in n and n.endswith("weight")]
    assert head and torch.equal(adapter[head[0]], merged["classifier.weight"])
    assert metrics["test"]["accuracy"] >= 0.75


def test_resume_from_an_epoch_checkpoint_is_exact(tmp_path, tiny_bert, sentiment_folder):
    path = _recipe(tmp_path, tiny_bert, sentiment_folder, data={"samples_per_class": 12})
    finished = train(load_recipe(path))
    resumed = tmp_path / "resumed"
    shutil.copytree(finished / "checkpoints", resumed / "checkpoints")
    names = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert names == ["step-00000030", "step-00000060", "step-00000090"]  # 24 rows x 10 passes in batches of 8
    shutil.rmtree(resumed / "checkpoints" / names[-1])  # as if killed during the last epoch
    train(load_recipe(path, output_dir=str(resumed)), resume=True)
    one, two = (load_file(str(p / "model.safetensors")) for p in (finished, resumed))
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert (
        json.loads((resumed / "metrics.json").read_text())["test"]
        == json.loads((finished / "metrics.json").read_text())["test"]
    )


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path, dropout_free_bert, sentiment_folder):
    data = {"samples_per_class": 12}
    path = _recipe(tmp_path, dropout_free_bert, sentiment_folder, training={"epochs": 2}, data=data)
    one = train(load_recipe(path, output_dir=str(tmp_path / "one")))
    command = [*ACCELERATE_CPU_LAUNCH, "--multi_gpu", "--num_processes", "2", "-m", "hf_transfer", "train", str(path)]
    command += ["training.batch_size=4", "--output-dir", str(tmp_path / "two")]
    result = subprocess.run(
        command, capture_output=True, text=True, env=python_env(ACCELERATE_USE_CPU="1"), cwd=tmp_path, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    two = tmp_path / "two"
    metrics_one, metrics_two = (json.loads((p / "metrics.json").read_text()) for p in (one, two))
    assert (metrics_one["train"]["processes"], metrics_two["train"]["processes"]) == (1, 2)
    assert metrics_one["train"]["steps"] == metrics_two["train"]["steps"] == 60  # 2 epochs of 24 rows x 10 passes
    # The loss compares the whole global batch (embeddings gathered across ranks), so the encoders agree to float32
    # rounding; the heads are fitted on their features, and predict alike.
    weights_one, weights_two = (load_file(str(p / "model.safetensors")) for p in (one, two))
    base = load_file(str(dropout_free_bert / "model.safetensors"))
    moved = 0
    for name, tensor in weights_one.items():
        if name.startswith("bert."):
            assert torch.allclose(weights_two[name], tensor, rtol=1e-4, atol=1e-5), name
            moved += int((tensor - base[name.removeprefix("bert.")]).abs().max().item() > 1e-3)
    assert moved > 10
    assert torch.allclose(weights_two["classifier.weight"], weights_one["classifier.weight"], rtol=1e-3, atol=1e-3)
    assert metrics_two["test"]["accuracy"] == metrics_one["test"]["accuracy"]


def test_the_pairs_loss_trains_the_encoder_too(tmp_path, tiny_bert, sentiment_folder):
    strategy, training = {"loss": "pairs", "epoch_rows": 64}, {"epochs": 2}
    path = _recipe(tmp_path, tiny_bert, sentiment_folder, strategy=strategy, training=training)
    out = train(load_recipe(path))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 * 8
    saved, base = load_file(str(out / "model.safetensors")), load_file(str(tiny_bert / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(saved[f"bert.{name}"], base[name])
    assert metrics["test"]["accuracy"] >= 0.6
