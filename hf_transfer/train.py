"""The training run: one Accelerate loop, read top to bottom, that leaves a self-describing output folder."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader, SequentialSampler
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import checkpoints, outputs
from .data import prepare_data, tokenize_splits
from .features import FeatureHead, can_use_cached_features, collate_features, feature_datasets
from .metrics import compute_metrics, flat_scores
from .recipe import Recipe
from .sources import resolve_model
from .strategies import apply_strategy, count_parameters, keep_frozen_norms_in_eval
from .tasks import TASKS, build_model, choose_pooling, load_tokenizer, probabilities

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a misconfigured launch); the message says where and why."""


@dataclass
class LoopState:
    """What a checkpoint must restore besides the weights, optimizer, scheduler and RNG states."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _check_single_main(accelerator: Accelerator) -> None:
    """Both ranks believing they are main means two processes write the same folder: stop before any work."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        raise TrainingError(
            f"WORLD_SIZE={world} but Accelerate sees one process: distributed setup did not happen (on CPU, launch "
            "with `accelerate launch --multi_gpu ...` and ACCELERATE_USE_CPU=1), so every rank would act as main"
        )
    if accelerator.num_processes > 1:
        mains = accelerator.gather(torch.tensor([int(accelerator.is_main_process)], device=accelerator.device))
        if int(mains.sum()) != 1:
            raise TrainingError(f"{int(mains.sum())} processes report themselves main; expected exactly one")


def _eval_split_name(splits: Any) -> str:
    return "test" if "test" in splits else "validation"


def _make_loader(
    dataset: Any,
    batch_size: int,
    collator: Any,
    shuffle: bool,
    lengths: list[int] | None,
    seed: int,
    global_batch: int | None = None,
):
    """Train batches grouped by length (less padding) in a seeded order; eval batches in dataset order."""
    generator = torch.Generator().manual_seed(seed)
    if shuffle and lengths is not None:
        # Grouped by the global batch (all processes, one step): Accelerate deals consecutive per-device batches to
        # the ranks, so N processes x B/N then see exactly the samples one process x B sees, in the same steps.
        sampler = LengthGroupedSampler(global_batch or batch_size, lengths=lengths, generator=generator)
    elif shuffle:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    # The loader draws its worker base seed from this generator, not the global RNG: then only dropout uses the
    # global RNG, which checkpoints restore, and a resumed run is bit-identical to an uninterrupted one.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, generator=generator)
    return loader, generator


@torch.inference_mode()
def evaluate_loader(accelerator: Accelerator, model: Any, loader: DataLoader, task: str, num_labels: int):
    """Metrics over every example exactly once (gather_for_metrics drops the padding of the last batch)."""
    model.eval()
    all_scores, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels")
        logits = model(**batch).logits
        scores, labels = accelerator.gather_for_metrics((probabilities(logits, task), labels))
        all_scores.append(scores.float().cpu())
        all_labels.append(labels.cpu())
    scores, labels = torch.cat(all_scores).numpy(), torch.cat(all_labels).numpy()
    config = accelerator.unwrap_model(model).config
    predictions = _decide(scores, task, getattr(config, "hf_transfer_threshold", 0.5))
    references = labels.astype(int) if task != "text-regression" else labels
    return compute_metrics(task, predictions, references, num_labels), scores, predictions


def _decide(scores: np.ndarray, task: str, threshold: float) -> np.ndarray:
    if task == "multi-label-classification":
        return (scores >= threshold).astype(int)
    if task == "text-regression":
        return scores
    return scores.argmax(axis=-1)


def _check_metric_for_best(recipe: Recipe, labels: list[Any], num_labels: int) -> None:
    """A misspelt training.metric_for_best fails before anything trains or is cleared, not after the first epoch."""
    name = recipe.training.metric_for_best
    if name is None:
        return
    references = np.asarray(labels)
    if recipe.task != "text-regression":
        references = references.astype(int)
    known = flat_scores(compute_metrics(recipe.task, references, references, num_labels))
    if name not in known:
        raise TrainingError(f"training.metric_for_best = {name!r} is not computed; choose from {sorted(known)}")


def _flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Trackers take flat, primitive hyperparameters: `training.lr`, with lists and None as text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(recipe: Recipe, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Run the recipe end to end and return the output folder."""
    started = time.perf_counter()
    out = Path(recipe.training.output_dir)
    t = recipe.training
    accelerator = Accelerator(
        gradient_accumulation_steps=t.grad_accum,
        log_with=outputs.available_trackers(t.log_with) or None,
        project_dir=str(out),
    )
    _check_single_main(accelerator)
    outputs.claim_output_dir(out, overwrite=overwrite, resume=resume, is_main=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    set_seed(t.seed)

    # Downloads and dataset caches are written once, by the main process, then read by the others.
    with accelerator.main_process_first():
        model_source = resolve_model(recipe.model, recipe.model_revision)
        data = prepare_data(recipe)
        tokenizer = load_tokenizer(model_source.location, recipe)
        tokenized = tokenize_splits(data.splits, tokenizer, recipe.data.max_length)
    pooling = choose_pooling(recipe, Path(model_source.location))
    model = build_model(recipe, model_source.location, data.labels.id2label, pooling)
    model = apply_strategy(model, recipe)
    trainable, total = count_parameters(model)
    # Only now that the recipe, data, model and strategy have all loaded: a bad input never costs the old run.
    _check_metric_for_best(recipe, data.splits["validation"]["label"], len(data.labels.id2label))
    if overwrite and not resume:
        outputs.clear_output_dir(out, is_main=accelerator.is_main_process)
    accelerator.wait_for_everyone()

    eval_batch = t.eval_batch_size or t.batch_size * 2
    full_model = model
    if can_use_cached_features(model):
        # Feature extraction proper: the frozen backbone runs once per example, not once per example per epoch;
        # the loop below then trains the model's own classifier on the pooled features.
        model.to(accelerator.device)
        tokenized = feature_datasets(accelerator, model, tokenized, tokenizer, eval_batch)
        model, collator, lengths = FeatureHead(model), collate_features, None
    else:
        collator = DataCollatorWithPadding(tokenizer)
        lengths = tokenized["train"]["length"] if t.group_by_length else None
        tokenized = tokenized.remove_columns("length")
    global_batch = t.batch_size * accelerator.num_processes * t.grad_accum
    train_loader, train_generator = _make_loader(
        tokenized["train"], t.batch_size, collator, True, lengths, t.seed, global_batch
    )
    eval_loaders = {
        name: _make_loader(tokenized[name], eval_batch, collator, False, None, t.seed)[0]
        for name in tokenized
        if name != "train"
    }

    parameters = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]  # biases and norms are not decayed
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=t.lr
    )
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / t.grad_accum)
    total_steps = steps_per_epoch * t.epochs
    warmup_steps = int(t.warmup * total_steps) if t.warmup < 1 else int(t.warmup)
    # Accelerate's prepared scheduler steps once per process on every optimizer step (it assumes a schedule sized for
    # one process seeing every batch); DeepSpeed's engine steps it once. Sized in optimizer steps alone, the schedule
    # of N processes would end after 1/N of the training, with the learning rate at zero for the rest.
    ticks = 1 if accelerator.distributed_type == DistributedType.DEEPSPEED else accelerator.num_processes
    scheduler = get_scheduler(
        t.scheduler, optimizer, num_warmup_steps=warmup_steps * ticks, num_training_steps=total_steps * ticks
    )

    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}

    state, restored_from = LoopState(), None
    if resume:
        state, restored_from = checkpoints.restore_latest(accelerator, out, recipe)
        # A killed run may have logged evaluations after its newest checkpoint; they are redone from here, so the log
        # restarts from the checkpoint's history instead of holding them twice.
        outputs.rewrite_jsonl(out / "train_log.jsonl", state.history, accelerator.is_main_process)
    if accelerator.is_main_process:
        accelerator.init_trackers("hf_transfer", config=_flat_config(recipe.model_dump(mode="json")))

    spec = TASKS[recipe.task]
    metric_name = t.metric_for_best or spec.metric_for_best
    num_labels = len(data.labels.id2label)
    best_weights = checkpoints.load_best_weights(restored_from) if restored_from else None
    best_weights = best_weights or _trainable_state(accelerator.unwrap_model(model))
    samples_seen, train_seconds = 0, 0.0
    log_path = out / "train_log.jsonl"
    stop = False

    def run_evaluation(epoch: int) -> None:
        nonlocal best_weights, stop
        scores, _, _ = evaluate_loader(accelerator, model, eval_loaders["validation"], recipe.task, num_labels)
        scores = flat_scores(scores)
        if metric_name not in scores:
            raise TrainingError(
                f"training.metric_for_best = {metric_name!r} is not computed; choose from {sorted(scores)}"
            )
        value = scores[metric_name]
        improved = state.best_score is None or (
            value > state.best_score if spec.greater_is_better else value < state.best_score
        )
        if improved:
            state.best_score, state.best_epoch, state.evals_without_improvement = value, epoch, 0
            best_weights = _trainable_state(accelerator.unwrap_model(model))
        else:
            state.evals_without_improvement += 1
        entry = {"epoch": epoch, "step": state.global_step, **{f"validation_{k}": v for k, v in scores.items()}}
        state.history.append(entry)
        accelerator.log(entry, step=state.global_step)
        outputs.append_jsonl(log_path, entry, accelerator.is_main_process)
        logger.info("epoch %d step %d validation %s = %.4f", epoch, state.global_step, metric_name, value)
        # Early stopping is decided on the main process and broadcast, so every rank leaves the loop together.
        if t.early_stopping_patience and state.evals_without_improvement >= t.early_stopping_patience:
            accelerator.set_trigger()
        if accelerator.check_trigger():
            stop = True
        model.train()
        keep_frozen_norms_in_eval(model)

    def save_checkpoint() -> None:
        checkpoints.save(accelerator, out, recipe, state, best_weights, t.save_total_limit)

    progress = tqdm(
        total=total_steps, initial=state.global_step, disable=not accelerator.is_main_process, desc="train"
    )
    try:
        for epoch in range(state.epoch, t.epochs):
            model.train()
            keep_frozen_norms_in_eval(model)
            # Re-seeded per epoch so the batch order is the same whether or not the run was resumed.
            train_generator.manual_seed(t.seed + epoch)
            loader = train_loader
            if state.step_in_epoch:
                loader = skip_first_batches(train_loader, state.step_in_epoch)
            tick = time.perf_counter()
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    if not torch.isfinite(loss.detach()).all():
                        raise TrainingError(
                            f"loss is {loss.item()} at epoch {epoch}, step {state.global_step}; stopping. The last "
                            f"good checkpoint stays in {out / 'checkpoints'}. Lower training.lr, or check the data."
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and t.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state.step_in_epoch += 1
                samples_seen += len(batch["labels"]) * accelerator.num_processes
                if accelerator.sync_gradients:
                    state.global_step += 1
                    progress.update(1)
                    if state.global_step % 10 == 0:
                        accelerator.log(
                            {"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, step=state.global_step
                        )
                    if t.eval_every and state.global_step % t.eval_every == 0:
                        train_seconds += time.perf_counter() - tick
                        run_evaluation(epoch)
                        save_checkpoint()
                        tick = time.perf_counter()
                        if stop:
                            break
            train_seconds += time.perf_counter() - tick
            if stop:
                break
            state.epoch, state.step_in_epoch = epoch + 1, 0
            if not t.eval_every:
                run_evaluation(epoch)
            save_checkpoint()
            if stop:
                break
    except KeyboardInterrupt:
        logger.warning("interrupted: saving a checkpoint before exiting (resume with --resume)")
        save_checkpoint()
        raise
    progress.close()

    # Restore the best weights (only trainable parameters ever change), then score every labelled split.
    unwrapped = accelerator.unwrap_model(model)
    with torch.no_grad():
        current = dict(unwrapped.named_parameters())
        for name, value in (best_weights or {}).items():
            current[name].copy_(value.to(current[name].device))
    final_metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    eval_name = _eval_split_name(eval_loaders)
    eval_predictions = None
    for name, loader in eval_loaders.items():
        scores, raw_scores, predictions = evaluate_loader(accelerator, model, loader, recipe.task, num_labels)
        final_metrics[name] = flat_scores(scores)
        if name == eval_name:
            details, eval_predictions = scores, (raw_scores, predictions)
    wall = time.perf_counter() - started
    final_metrics["train"] = {
        "wall_s": round(wall, 3),
        "train_s": round(train_seconds, 3),
        "samples_per_s": round(samples_seen / train_seconds, 3) if train_seconds else 0.0,
        "processes": accelerator.num_processes,
        "trainable_params": trainable,
        "total_params": total,
        "strategy": recipe.strategy.kind,
        "epochs_run": len({h["epoch"] for h in state.history}),
        "best_epoch": state.best_epoch,
        "steps": state.global_step,
    }
    accelerator.wait_for_everyone()
    outputs.save_output_folder(
        accelerator,
        out,
        recipe=recipe,
        model=model if full_model is accelerator.unwrap_model(model) else full_model,
        tokenizer=tokenizer,
        model_source=model_source,
        data=data,
        pooling=pooling,
        metrics=final_metrics,
        details=details,
        eval_split=eval_name,
        eval_predictions=eval_predictions,
    )
    accelerator.end_training()
    return out


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def install_sigterm_as_interrupt() -> None:
    """`accelerate launch` passes SIGTERM on to its workers; treat it like Ctrl-C so a checkpoint is saved."""
    signal.signal(signal.SIGTERM, _interrupt)
