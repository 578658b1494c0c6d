"""1 process vs 2 processes at one global batch size: the same batches in the same steps, the same trained model."""

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from conftest import ACCELERATE_CPU_LAUNCH, ROOT, python_env, recipe_yaml, save_tiny_bert
from safetensors.torch import load_file

from hf_transfer.recipe import load_recipe
from hf_transfer.sampling import make_loader
from hf_transfer.train import train


def _global_batches(size: int, lengths: list[int] | None, processes: int, global_batch: int) -> list[list[int]]:
    """The samples every optimizer step sees across `processes` ranks, each loading global_batch / processes."""
    per_rank = []
    for rank in range(processes):
        loader, _ = make_loader(
            list(range(size)), global_batch // processes, list, True, lengths, 7, global_batch=global_batch
        )
        prepared = prepare_data_loader(loader, num_processes=processes, process_index=rank, put_on_device=False)
        per_rank.append([list(batch) for batch in prepared])
    return [sum(step, []) for step in zip(*per_rank, strict=True)]


@pytest.mark.parametrize("grouped", [False, True], ids=["random-order", "group-by-length"])
def test_two_ranks_see_exactly_the_global_batches_of_one_process(grouped):
    rng = random.Random(0)
    lengths = [rng.randint(3, 200) for _ in range(1000)]
    one = _global_batches(1000, lengths if grouped else None, 1, 8)
    two = _global_batches(1000, lengths if grouped else None, 2, 8)
    assert len(one) == len(two) == 125
    assert two == one  # same samples, same steps, rank 0 taking the first half of each


def test_a_remainder_batch_is_padded_with_repeated_samples_under_two_ranks():
    """Accelerate gives every rank a full batch: 100 samples at a global batch of 8 end with 4 real samples on one
    process, and those 4 plus 4 repeated from the start of the epoch on two. Only that last step differs."""
    one = _global_batches(100, None, 1, 8)
    two = _global_batches(100, None, 2, 8)
    assert two[:-1] == one[:-1]
    assert two[-1][:4] == one[-1] and len(one[-1]) == 4
    assert set(two[-1][4:]) <= set(sum(one[:1], []))


@pytest.fixture(scope="module")
def dropout_free_bert(tmp_path_factory) -> Path:
    """The tiny BERT of conftest without dropout: per-rank dropout masks can never match one process's masks."""
    folder = tmp_path_factory.mktemp("bert-no-dropout")
    return save_tiny_bert(folder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.slow
def test_two_process_run_matches_one_process_run_at_the_same_global_batch(
    tmp_path, dropout_free_bert, sentiment_folder
):
    # 96 training rows: 12 full global batches of 8 per epoch, so no step holds repeated samples (see above).
    recipe = recipe_yaml(
        tmp_path / "r.yaml",
        dropout_free_bert,
        sentiment_folder,
        tmp_path / "one",
        training={"epochs": 2, "batch_size": 8, "lr": 2e-3, "warmup": 0.2, "eval_every": 6, "save_total_limit": 1},
    )
    one = train(load_recipe(recipe))
    command = [
        *ACCELERATE_CPU_LAUNCH,
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / "multi-gpu.yaml"),  # the shipped config, on CPU
        "--num_processes",
        "2",
        "-m",
        "hf_transfer",
        "train",
        str(recipe),
        "training.batch_size=4",
        "--output-dir",
        str(tmp_path / "two"),
    ]
    env = python_env(ACCELERATE_USE_CPU="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    two = tmp_path / "two"

    metrics_one, metrics_two = (json.loads((p / "metrics.json").read_text()) for p in (one, two))
    assert (metrics_one["train"]["processes"], metrics_two["train"]["processes"]) == (1, 2)
    assert metrics_one["train"]["steps"] == metrics_two["train"]["steps"] == 24
    assert metrics_one["train"]["best_epoch"] == metrics_two["train"]["best_epoch"]
    for split in ("validation", "test"):
        assert metrics_two[split] == metrics_one[split], split  # predictions agree on every example
    # Weights agree to float32 rounding, not bit for bit: two ranks pad their half-batches to their own longest text
    # (other matmul shapes), average two half-batch gradients through gloo's all-reduce instead of one mean over
    # eight, and so sum in another order; 24 Adam steps carry those last-bit differences forward.
    weights_one, weights_two = (load_file(str(p / "model.safetensors")) for p in (one, two))
    assert weights_one.keys() == weights_two.keys()
    moved = 0
    base = load_file(str(dropout_free_bert / "model.safetensors"))
    for name, tensor in weights_one.items():
        assert torch.allclose(weights_two[name], tensor, rtol=1e-4, atol=1e-5), (
            name,
            (weights_two[name] - tensor).abs().max().item(),
        )
        start = base.get(name.removeprefix("bert."))
        if start is not None and start.shape == tensor.shape:
            moved += int((tensor - start).abs().max().item() > 1e-3)
    assert moved > 10  # the runs trained (a learning rate at zero would also give equal weights)
