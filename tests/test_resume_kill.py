"""Runs that die mid-way: a real SIGKILL then `--resume` (bit-identical on CPU), and a non-finite loss."""

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ACCELERATE_CPU_LAUNCH, python_env, recipe_yaml, write_csv
from safetensors.torch import load_file

from hf_transfer.checkpoints import LOOP_STATE, checkpoint_dirs
from hf_transfer.recipe import load_recipe
from hf_transfer.train import TrainingError, train

LAUNCH = [*ACCELERATE_CPU_LAUNCH, "--num_processes", "1", "-m", "hf_transfer", "train"]
EVAL_EVERY, STEPS_PER_EPOCH, EPOCHS = 6, 12, 4  # 96 training rows in batches of 8


def _launch(recipe: Path, *args: str, log: Path) -> subprocess.Popen:
    """Start a 1-process `accelerate launch` writing its output to `log` (a pipe nobody reads could fill and stall)."""
    with open(log, "w", encoding="utf-8") as handle:
        # Its own session, hence its own process group: `accelerate launch` does not pass a SIGKILL on to the
        # training process it starts, so the test kills the whole group, as a job scheduler would.
        return subprocess.Popen(
            [*LAUNCH, str(recipe), *args],
            cwd=log.parent,
            env=python_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    process.wait(timeout=timeout)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, text[-5000:]
    return text


def _newest_step(out: Path) -> int:
    folders = checkpoint_dirs(out)
    return int(folders[-1].name.split("-")[1]) if folders else 0


def _kill_group_at(process: subprocess.Popen, out: Path, step: int, timeout: float = 600) -> int:
    """SIGKILL the launch and its training process once a checkpoint at `step` or later exists; return its step."""
    deadline = time.monotonic() + timeout
    while _newest_step(out) < step:
        assert process.poll() is None, f"the run ended before a checkpoint at step {step}; see {process.args}"
        assert time.monotonic() < deadline, f"no checkpoint at step {step} after {timeout} s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    for _ in range(500):  # the group is gone once its last member has been reaped
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("a process of the killed launch survived SIGKILL")
    return _newest_step(out)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_bert, sentiment_folder):
    recipe = recipe_yaml(
        tmp_path / "r.yaml",
        tiny_bert,
        sentiment_folder,
        tmp_path / "killed",
        training={"epochs": EPOCHS, "eval_every": EVAL_EVERY, "save_total_limit": 3},
    )
    total = STEPS_PER_EPOCH * EPOCHS
    reference_log = tmp_path / "reference.log"
    _finish(_launch(recipe, "--output-dir", str(tmp_path / "reference"), log=reference_log), reference_log)

    target = random.choice(range(2 * EVAL_EVERY, total // 2 + 1, EVAL_EVERY))
    out = tmp_path / "killed"
    killed_at = _kill_group_at(_launch(recipe, log=tmp_path / "killed.log"), out, target)
    assert target <= killed_at < total, (target, killed_at)
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()

    # A kill during a save leaves a temporary folder: half a checkpoint for the step the resumed run writes next.
    leftover = out / "checkpoints" / f".tmp-step-{killed_at + EVAL_EVERY:08d}"
    shutil.rmtree(leftover, ignore_errors=True)
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 100)
    (leftover / LOOP_STATE).write_text('{"epoch": ', encoding="utf-8")

    log = _finish(_launch(recipe, "--resume", log=tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert f"resumed from step-{killed_at:08d}" in log, (target, log[-3000:])
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the resumed run wrote that step itself

    reference = tmp_path / "reference"
    resumed_weights, reference_weights = (load_file(str(p / "model.safetensors")) for p in (out, reference))
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(resumed_weights[name], tensor), (name, target, killed_at)  # bit-identical on CPU
    resumed_metrics, reference_metrics = (json.loads((p / "metrics.json").read_text()) for p in (out, reference))
    for split in ("validation", "test"):
        assert resumed_metrics[split] == reference_metrics[split], (split, target, killed_at)
    assert resumed_metrics["train"]["steps"] == reference_metrics["train"]["steps"] == total
    # Each evaluation once, with the uninterrupted run's numbers, even those the killed run logged past its checkpoint.
    assert (out / "train_log.jsonl").read_text() == (reference / "train_log.jsonl").read_text()


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_bert):
    data = tmp_path / "data"
    data.mkdir()
    rows = [(f"{'great ' * (i % 4)}film number {i}", i % 4 / 3) for i in range(96)]
    # A finite target whose squared error overflows float32: the loss of the batch holding it is inf. Batches are
    # grouped by length in groups of 3 batches, longest first, so the shortest text is in a group's third batch.
    rows[7] = ("ok", 1e30)
    write_csv(data / "train.csv", rows)
    write_csv(data / "validation.csv", [(f"{'great ' * (i % 4)}film {i}", i % 4 / 3) for i in range(8)])
    out = tmp_path / "out"
    recipe = recipe_yaml(
        tmp_path / "r.yaml",
        tiny_bert,
        data,
        out,
        task="text-regression",
        training={"epochs": 1, "eval_every": 1, "save_total_limit": 100, "group_by_length": True},
    )
    with pytest.raises(TrainingError, match=r"loss is (inf|nan) at epoch 0, step (\d+); stopping") as error:
        train(load_recipe(recipe))
    step = int(error.value.args[0].split("step ")[1].split(";")[0])
    assert step >= 2
    assert f"The last good checkpoint stays in {out / 'checkpoints'}" in str(error.value)
    newest = checkpoint_dirs(out)[-1]
    assert newest.name == f"step-{step:08d}"  # the checkpoint of the last step whose loss was finite
    assert json.loads((newest / LOOP_STATE).read_text())["global_step"] == step
    weights = load_file(str(newest / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert not (out / "model.safetensors").exists()  # no final model from a broken run


def test_ctrl_c_saves_a_checkpoint_before_exiting(tmp_path, tiny_bert):
    """SIGINT mid-epoch: the run exits with 130 after checkpointing the step it reached (resume: tests above)."""
    from conftest import sentiment_rows

    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", sentiment_rows(3000, 1))  # batch 1: the first epoch lasts minutes
    write_csv(data / "validation.csv", sentiment_rows(24, 2))
    out = tmp_path / "out"
    recipe = recipe_yaml(tmp_path / "r.yaml", tiny_bert, data, out, training={"epochs": 2, "batch_size": 1})
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            ["python", "-m", "hf_transfer", "train", str(recipe)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=python_env(),
            cwd=tmp_path,
            # A background job of a non-interactive shell (`pytest &`, nohup) starts with SIGINT ignored, and Python
            # keeps an inherited SIG_IGN: the child gets the default disposition back, as a terminal would give it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    deadline = time.monotonic() + 300
    while "train:" not in log.read_text() and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(2)  # a few optimizer steps into the first epoch
    assert not checkpoint_dirs(out), "a checkpoint existed before the interrupt"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    saved = checkpoint_dirs(out)
    assert len(saved) == 1
    state = json.loads((saved[0] / LOOP_STATE).read_text())
    assert state["epoch"] == 0 and state["global_step"] == state["step_in_epoch"] > 0
