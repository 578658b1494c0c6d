"""Loop options on the tiny BERT: early stopping, gradient accumulation, step-wise evaluation, trackers, warnings."""

import json

import pytest

from hf_transfer import doctor
from hf_transfer.recipe import load_recipe
from hf_transfer.train import train


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_early_stopping_stops_after_patience_without_improvement(make_recipe):
    # lr 0 never improves on the first evaluation, so patience 2 ends the run after three evaluations.
    recipe = load_recipe(make_recipe(training={"epochs": 8, "lr": 1e-12, "early_stopping_patience": 2}))
    out = train(recipe)
    assert [entry["epoch"] for entry in _log(out)] == [0, 1, 2]
    metrics = json.loads((out / "metrics.json").read_text())["train"]
    assert metrics["epochs_run"] == 3 and metrics["best_epoch"] == 0


def test_gradient_accumulation_counts_optimizer_steps(make_recipe):
    # 96 rows, batch 8 → 12 batches per epoch; accumulating 3 makes 4 optimizer steps per epoch.
    out = train(load_recipe(make_recipe(training={"epochs": 2, "grad_accum": 3})))
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 8


def test_eval_every_n_steps_logs_each_evaluation(make_recipe):
    out = train(load_recipe(make_recipe(training={"epochs": 1, "eval_every": 4})))
    assert [entry["step"] for entry in _log(out)] == [4, 8, 12]


def test_tensorboard_tracker_writes_event_files(make_recipe):
    pytest.importorskip("tensorboard")
    out = train(load_recipe(make_recipe(training={"epochs": 1, "log_with": ["tensorboard"]})))
    assert list(out.rglob("events.out.tfevents.*")), "no tensorboard event file under the output folder"


def test_missing_tracker_is_a_warning_not_a_failure(make_recipe, caplog):
    out = train(load_recipe(make_recipe(training={"epochs": 1, "log_with": ["no-such-tracker"]})))
    assert (out / "metrics.json").is_file()
    assert "tracker 'no-such-tracker' is not installed" in caplog.text


def test_doctor_detects_a_foreign_hf_transfer_installation(monkeypatch):
    monkeypatch.setattr(doctor.importlib.metadata, "files", lambda name: ["hf_transfer/__init__.py"])
    problem = doctor.foreign_installation()
    assert problem and "pip uninstall hf-transfer" in problem
    text, healthy = doctor.report()
    assert "PROBLEM" in text and healthy is False


def test_accelerate_launch_on_cpu_gets_its_share_of_the_cores(monkeypatch):
    """`accelerate launch` without --cpu sets OMP_NUM_THREADS=1 in each process; a CPU run then uses one core."""
    import os
    from types import SimpleNamespace

    import torch

    from hf_transfer.launch import use_the_cpu_cores

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    launched = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    try:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        use_the_cpu_cores(launched)
        assert torch.get_num_threads() == cores
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # as many processes as cores: one thread each
        use_the_cpu_cores(launched)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("HF_TRANSFER_CPU_THREADS", "3")  # the user's number wins
        use_the_cpu_cores(launched)
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("HF_TRANSFER_CPU_THREADS")
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")  # not launched by accelerate: left alone
        use_the_cpu_cores(launched)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
