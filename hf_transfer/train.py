"""The training run: set up, fit, finish — one Accelerate loop, read top to bottom, that leaves the output folder.

What differs by task comes from the task's plug-in (`tasks/`), what differs by strategy from the strategy's transform
and its pre-phases (`strategies.py`); the loop itself names neither."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from . import checkpoints, outputs, ownership
from .checkpoints import LoopState
from .data import PreparedData
from .errors import TrainingError
from .evaluation import check_metric_for_best, evaluate_loader
from .features import FeatureCache
from .fileio import append_jsonl, rewrite_jsonl
from .launch import check_single_main, install_sigterm_as_interrupt, use_the_cpu_cores
from .metrics import flat_scores
from .recipe import Recipe
from .sampling import balanced_sample_weights, class_weights, make_loader, weighted_loss
from .sources import Resolved, resolve_model
from .strategies import Fit, apply_strategy, count_parameters, keep_frozen_norms_in_eval, not_yet_unfrozen, plan_fit
from .strategies import optimizer_groups as optimizer_groups
from .tasks import Task, task_for

__all__ = ["train", "install_sigterm_as_interrupt", "optimizer_groups"]

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one training run holds between its steps."""

    accelerator: Accelerator
    recipe: Recipe
    task: Task
    out: Path
    model_source: Resolved
    data: PreparedData
    preprocessor: Any
    pooling: str
    fit: Fit
    class_weight: torch.Tensor | None
    parameters: tuple[int, int]
    started: float
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    train_loader: Any = None
    train_generator: torch.Generator | None = None
    eval_loaders: dict[str, Any] = field(default_factory=dict)
    state: LoopState = field(default_factory=LoopState)
    best_weights: dict[str, torch.Tensor] | None = None
    samples_seen: int = 0
    train_seconds: float = 0.0
    total_steps: int = 0


@ownership.releasing_output_locks
def train(recipe: Recipe, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Run the recipe end to end and return the output folder."""
    run = set_up(recipe, overwrite=overwrite, resume=resume)
    fit(run)
    return finish(run)


# ---------------------------------------------------------------- set up


def set_up(recipe: Recipe, *, overwrite: bool, resume: bool) -> Run:
    """Load model and data, apply the strategy, and build loaders, optimizer and schedule (restored on resume)."""
    started = time.perf_counter()
    out, t = Path(recipe.training.output_dir), recipe.training
    accelerator = Accelerator(
        gradient_accumulation_steps=t.grad_accum,
        log_with=outputs.available_trackers(t.log_with) or None,
        project_dir=str(out),
    )
    check_single_main(accelerator)
    ownership.claim_output_dir(out, recipe, overwrite=overwrite, resume=resume)
    accelerator.wait_for_everyone()
    _configure_logging(accelerator)
    use_the_cpu_cores(accelerator)
    set_seed(t.seed)
    task = task_for(recipe.task)

    # Downloads and dataset caches are written once, by the main process, then read by the others.
    with accelerator.main_process_first():
        model_source = resolve_model(recipe.model, recipe.model_revision)
        data = task.prepare_data(recipe)
        preprocessor = task.load_preprocessor(model_source.location, recipe)
        encoded = task.encode(data.splits, preprocessor, recipe)
    data.labels.skipped.update(encoded.left_out)  # recorded with what loading left out (run.json, metrics.json)
    pooling = task.choose_pooling(recipe, Path(model_source.location))
    model = apply_strategy(task.build_model(recipe, model_source.location, data.labels.id2label, pooling), recipe)
    parameters = count_parameters(model)
    # Only now that the recipe, data, model and strategy have all loaded: a bad input never costs the old run.
    num_labels = len(data.labels.id2label)
    names = [data.labels.id2label[i] for i in range(num_labels)]
    check_metric_for_best(recipe, task, data.splits["validation"]["label"], num_labels, names)
    if recipe.strategy.unfreeze_every and accelerator.distributed_type in (
        DistributedType.FSDP,
        DistributedType.DEEPSPEED,
    ):
        raise TrainingError("strategy.unfreeze_every is not supported under FSDP or DeepSpeed yet; launch with DDP")
    weight = class_weights(recipe, list(data.splits["train"]["label"]), data.labels.id2label)
    weight = None if weight is None else weight.to(accelerator.device)
    # Created, locked for this run, marked and (--overwrite) cleared of the earlier run's files only now.
    ownership.take_output_dir(out, accelerator, overwrite=overwrite, resume=resume)
    accelerator.wait_for_everyone()

    def make_cache() -> FeatureCache | None:
        return FeatureCache.for_run(recipe, model_source, preprocessor, pooling, data.splits, model, task.features)

    plan = plan_fit(accelerator, recipe, task, model, encoded, preprocessor, weight, make_cache, resume)
    run = Run(
        accelerator, recipe, task, out, model_source, data, preprocessor, pooling, plan, weight, parameters, started
    )
    _prepare_loop(run, resume)
    return run


def _configure_logging(accelerator: Accelerator) -> None:
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise


def _prepare_loop(run: Run, resume: bool) -> None:
    """Loaders, AdamW and the schedule, prepared by Accelerate; on resume, the newest checkpoint restored."""
    accelerator, t, encoded = run.accelerator, run.recipe.training, run.fit.encoded
    global_batch = t.batch_size * accelerator.num_processes * t.grad_accum
    train_labels = list(run.data.splits["train"]["label"])
    sample_weights = balanced_sample_weights(train_labels) if t.balanced_sampler else None
    train_loader, run.train_generator = make_loader(
        encoded.splits["train"],
        t.batch_size,
        encoded.collator,
        True,
        encoded.lengths,
        t.seed,
        global_batch,
        sample_weights,
        encoded.sampler,
    )
    eval_batch = t.eval_batch_size or t.batch_size * 2
    eval_loaders = {
        name: make_loader(split, eval_batch, encoded.collator, False, None, t.seed)[0]
        for name, split in encoded.splits.items()
        if name != "train"
    }
    # Fused AdamW (one kernel for every tensor; the Trainer's default too) where the parameters' device has it.
    fused = accelerator.device.type in ("cpu", "cuda") and accelerator.distributed_type != DistributedType.DEEPSPEED
    optimizer = torch.optim.AdamW(optimizer_groups(run.fit.model, t), lr=t.lr, fused=fused)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / t.grad_accum)
    run.total_steps = steps_per_epoch * t.epochs
    warmup_steps = int(t.warmup * run.total_steps) if t.warmup < 1 else int(t.warmup)
    # Accelerate's prepared scheduler steps once per process on every optimizer step (it assumes a schedule sized for
    # one process seeing every batch); DeepSpeed's engine steps it once. Sized in optimizer steps alone, the schedule
    # of N processes would end after 1/N of the training, with the learning rate at zero for the rest.
    ticks = 1 if accelerator.distributed_type == DistributedType.DEEPSPEED else accelerator.num_processes
    scheduler = get_scheduler(
        t.scheduler, optimizer, num_warmup_steps=warmup_steps * ticks, num_training_steps=run.total_steps * ticks
    )
    run.model, run.optimizer, run.train_loader, run.scheduler = accelerator.prepare(
        run.fit.model, optimizer, train_loader, scheduler
    )
    run.eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}
    restored_from = None
    if resume:
        run.state, restored_from = checkpoints.restore_latest(accelerator, run.out, run.recipe)
        # A killed run may have logged evaluations after its newest checkpoint; they are redone from here, so the log
        # restarts from the checkpoint's history instead of holding them twice.
        rewrite_jsonl(run.out / "train_log.jsonl", run.state.history, accelerator.is_main_process)
    if accelerator.is_main_process:
        accelerator.init_trackers("hf_transfer", config=_flat_config(run.recipe.model_dump(mode="json")))
    best = checkpoints.load_best_weights(restored_from) if restored_from else None
    run.best_weights = best or checkpoints.trainable_state(accelerator.unwrap_model(run.model))


# ---------------------------------------------------------------- fit


def fit(run: Run) -> None:
    """The epochs: train, evaluate on validation, keep the best weights, checkpoint; Ctrl-C checkpoints first."""
    if run.fit.fitted:  # a head fitted in one go is scored once (the log's one entry); no epochs to run
        _evaluate(run, 0)
    keep_last = _keeps_last(run)
    progress = tqdm(
        total=run.total_steps, initial=run.state.global_step, disable=not run.accelerator.is_main_process, desc="train"
    )
    try:
        for epoch in range(run.state.epoch, run.fit.epochs):
            stop = _train_epoch(run, epoch, progress)
            if stop:
                break
            run.state.epoch, run.state.step_in_epoch = epoch + 1, 0
            scored = run.fit.selects_best and not run.recipe.training.eval_every
            stop = _evaluate(run, epoch, keep_last) if scored else False
            if keep_last:
                run.best_weights = checkpoints.trainable_state(run.accelerator.unwrap_model(run.model))
            _save_checkpoint(run)
            if stop:
                break
    except KeyboardInterrupt:
        logger.warning("interrupted: saving a checkpoint before exiting (resume with --resume)")
        _save_checkpoint(run)
        raise
    progress.close()
    if run.fit.after_epochs is not None:  # the strategy's post-phase (the contrastive head's fit), then one score
        run.fit.fitted.update(run.fit.after_epochs(run.accelerator))
        run.best_weights = checkpoints.trainable_state(run.accelerator.unwrap_model(run.model))
        _evaluate(run, max(run.fit.epochs - 1, 0), keep_last)


def _keeps_last(run: Run) -> bool:
    """The last epoch is kept when there is nothing to score between epochs (the contrastive phase) or when the
    validation rows are too few to choose an epoch by (data.samples_per_class without a validation split)."""
    return not (run.fit.selects_best and run.data.selects_best)


def _train_epoch(run: Run, epoch: int, progress: tqdm) -> bool:
    """One pass over the train loader (from where a resumed run stopped); True when early stopping ends the run."""
    accelerator, t, model = run.accelerator, run.recipe.training, run.model
    model.train()
    keep_frozen_norms_in_eval(model)
    # Re-seeded per epoch so the batch order is the same whether or not the run was resumed.
    run.train_generator.manual_seed(t.seed + epoch)
    if run.fit.encoded.set_epoch is not None:
        run.fit.encoded.set_epoch(epoch)
    waiting = not_yet_unfrozen(accelerator.unwrap_model(model), run.fit.unfreeze_at, epoch)
    loader = run.train_loader
    if run.state.step_in_epoch:
        loader = skip_first_batches(run.train_loader, run.state.step_in_epoch)
    tick = time.perf_counter()
    for batch in loader:
        loss = _step(run, batch, waiting, epoch)
        run.state.step_in_epoch += 1
        run.samples_seen += len(batch["labels"]) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        run.state.global_step += 1
        progress.update(1)
        if run.state.global_step % 10 == 0:
            lr = run.scheduler.get_last_lr()[0]
            accelerator.log({"train_loss": loss.item(), "lr": lr}, step=run.state.global_step)
        if t.eval_every and run.state.global_step % t.eval_every == 0:
            run.train_seconds += time.perf_counter() - tick
            stop = _evaluate(run, epoch, _keeps_last(run))
            _save_checkpoint(run)
            tick = time.perf_counter()
            if stop:
                return True
    run.train_seconds += time.perf_counter() - tick
    return False


def _step(run: Run, batch: dict[str, Any], waiting: list[torch.nn.Parameter], epoch: int) -> torch.Tensor:
    """One forward/backward; the optimizer steps when the accumulation window closes."""
    accelerator, t, model = run.accelerator, run.recipe.training, run.model
    with accelerator.accumulate(model):
        output = model(**batch)
        weight = run.fit.loss_weight
        loss = output.loss if weight is None else weighted_loss(output.logits, batch["labels"], weight)
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(
                f"loss is {loss.item()} at epoch {epoch}, step {run.state.global_step}; stopping. The last good "
                f"checkpoint stays in {run.out / 'checkpoints'}. Lower training.lr, or check the data."
            )
        accelerator.backward(loss)
        for parameter in waiting:  # gradual unfreezing: not this parameter's epoch yet
            parameter.grad = None
        if accelerator.sync_gradients and t.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return loss


def _evaluate(run: Run, epoch: int, keep_last: bool = False) -> bool:
    """Score validation, keep the best weights (`keep_last`: these, whatever they score), log; True when early
    stopping (decided on main) ends the run."""
    accelerator, t, state = run.accelerator, run.recipe.training, run.state
    metric = t.metric_for_best or run.task.metric_for_best
    num_labels = len(run.data.labels.id2label)
    scores, _, _ = evaluate_loader(accelerator, run.model, run.eval_loaders["validation"], run.task, num_labels)
    scores = flat_scores(scores)
    if metric not in scores:
        raise TrainingError(f"training.metric_for_best = {metric!r} is not computed; choose from {sorted(scores)}")
    value = scores[metric]
    best = state.best_score
    if keep_last or best is None or (value > best if run.task.greater_is_better else value < best):
        state.best_score, state.best_epoch, state.evals_without_improvement = value, epoch, 0
        run.best_weights = checkpoints.trainable_state(accelerator.unwrap_model(run.model))
    else:
        state.evals_without_improvement += 1
    entry = {"epoch": epoch, "step": state.global_step, **{f"validation_{k}": v for k, v in scores.items()}}
    state.history.append(entry)
    accelerator.log(entry, step=state.global_step)
    append_jsonl(run.out / "train_log.jsonl", entry, accelerator.is_main_process)
    logger.info("epoch %d step %d validation %s = %.4f", epoch, state.global_step, metric, value)
    if t.early_stopping_patience and state.evals_without_improvement >= t.early_stopping_patience:
        accelerator.set_trigger()
    stop = accelerator.check_trigger()
    run.model.train()
    keep_frozen_norms_in_eval(run.model)
    return stop


def _save_checkpoint(run: Run) -> None:
    t = run.recipe.training
    checkpoints.save(run.accelerator, run.out, run.recipe, run.state, run.best_weights, t.save_total_limit)


# ---------------------------------------------------------------- finish


def finish(run: Run) -> Path:
    """Restore the best weights, score every labelled split, and write the output folder."""
    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(run.model)
    with torch.no_grad():  # trainable parameters and normalisation statistics of the best evaluation
        current = {**dict(unwrapped.named_parameters()), **dict(unwrapped.named_buffers())}
        for name, value in (run.best_weights or {}).items():
            current[name].copy_(value.to(current[name].device))
    final_metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    eval_name = "test" if "test" in run.eval_loaders else "validation"
    eval_predictions = None
    num_labels = len(run.data.labels.id2label)
    for name, loader in run.eval_loaders.items():
        scores, raw_scores, predictions = evaluate_loader(accelerator, run.model, loader, run.task, num_labels)
        final_metrics[name] = flat_scores(scores)
        if name == eval_name:
            details, eval_predictions = scores, (raw_scores, predictions)
    final_metrics["train"] = _train_record(run)
    accelerator.wait_for_everyone()
    saved = run.model if run.fit.saved_model is unwrapped else run.fit.saved_model
    outputs.save_output_folder(
        accelerator,
        run.out,
        recipe=run.recipe,
        task=run.task,
        model=saved,
        preprocessor=run.preprocessor,
        model_source=run.model_source,
        data=run.data,
        pooling=run.pooling,
        metrics=final_metrics,
        details=details,
        eval_split=eval_name,
        eval_predictions=eval_predictions,
    )
    ownership.record_output_files(run.out)
    # Trackers are finished here, but the process group is left up (end_training() would destroy it): compare and
    # advise run several trainings in one launch, and the command line ends the group once, on its way out.
    for tracker in accelerator.trackers:
        tracker.finish()
    return run.out


def _train_record(run: Run) -> dict[str, Any]:
    """metrics.json's `train` entry: times, speed, parameters, and what the data loading left out."""
    state, seconds = run.state, run.train_seconds
    trainable, total = run.parameters
    return {
        "wall_s": round(time.perf_counter() - run.started, 3),
        "train_s": round(seconds, 3),
        "samples_per_s": round(run.samples_seen / seconds, 3) if seconds else 0.0,
        "trained_on": run.fit.trained_on,
        "processes": run.accelerator.num_processes,
        "trainable_params": trainable,
        "total_params": total,
        "strategy": run.recipe.strategy.kind,
        "head": run.recipe.strategy.head.type,
        **{f"head_{k}": v for k, v in run.fit.fitted.items()},
        "epochs_run": max(len({h["epoch"] for h in state.history}), state.epoch),
        "best_epoch": state.best_epoch,
        "selects_best": not _keeps_last(run),
        "steps": state.global_step,
        # Rows and files the data loading left out (empty texts, unreadable or excluded images), by reason.
        **{f"skipped_{reason}": count for reason, count in sorted(run.data.labels.skipped.items()) if count},
    }


def _flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Trackers take flat, primitive hyperparameters: `training.lr`, with lists and None as text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat
