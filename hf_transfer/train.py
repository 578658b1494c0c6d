"""The training run: one Accelerate loop, read top to bottom, that leaves a self-describing output folder."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DistributedType, broadcast, set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader, SequentialSampler, WeightedRandomSampler
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import checkpoints, outputs, ownership
from .data import prepare_data, tokenize_splits
from .errors import TrainingError
from .features import (
    FeatureCache,
    FeatureHead,
    can_use_cached_features,
    collate_features,
    feature_datasets,
    feature_head,
    fit_logistic_head,
)
from .fileio import append_jsonl, rewrite_jsonl
from .images import collate_images, transformed_splits
from .metrics import compute_metrics, flat_scores
from .recipe import Recipe, TrainingConfig
from .sources import resolve_model
from .strategies import (
    StrategyError,
    apply_strategy,
    count_parameters,
    keep_frozen_norms_in_eval,
    parameter_depths,
    unfreeze_schedule,
)
from .tasks import TASKS, build_model, choose_pooling, is_image_task, load_tokenizer, probabilities

logger = logging.getLogger(__name__)


CPU_THREADS_ENV = "HF_TRANSFER_CPU_THREADS"
"""Threads per CPU process; by default each process of an `accelerate launch` gets its share of the cores."""


def _use_the_cpu_cores(accelerator: Accelerator) -> None:
    """`accelerate launch` without `--cpu` (the usual command on a machine without a GPU) starts every process with
    OMP_NUM_THREADS=1: one process then trains on one core however many there are (measured here: SST-2 encoding
    took 62 s instead of 44 s on 2 cores). Give each CPU process its share of the cores instead, unless
    $HF_TRANSFER_CPU_THREADS names a number."""
    if accelerator.device.type != "cpu":
        return
    if os.environ.get(CPU_THREADS_ENV, "").strip():
        threads = int(os.environ[CPU_THREADS_ENV])
    elif "ACCELERATE_MIXED_PRECISION" in os.environ and os.environ.get("OMP_NUM_THREADS") == "1":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        threads = max(1, cores // max(local, 1))
    else:
        return
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info("CPU: %d threads per process (%s to change)", threads, CPU_THREADS_ENV)


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
    sample_weights: list[float] | None = None,
):
    """Train batches grouped by length (less padding) or drawn by sample weight, in a seeded order; eval batches in
    dataset order."""
    generator = torch.Generator().manual_seed(seed)
    if shuffle and sample_weights is not None:
        sampler = WeightedRandomSampler(sample_weights, len(sample_weights), replacement=True, generator=generator)
    elif shuffle and lengths is not None:
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


def _class_weights(recipe: Recipe, train_labels: list[int], id2label: dict[int, str]) -> torch.Tensor | None:
    """`training.class_weights` as one loss weight per label id; None when the loss is unweighted."""
    setting = recipe.training.class_weights
    if setting == "none":
        return None
    if setting == "balanced":
        counts = np.bincount(train_labels, minlength=len(id2label))
        weights = len(train_labels) / (len(id2label) * np.maximum(counts, 1))  # scikit-learn's "balanced"
    else:
        unknown = sorted(set(setting) - set(id2label.values()))
        if unknown:
            raise TrainingError(
                f"training.class_weights names {unknown[0]!r}, not a label; labels: {sorted(id2label.values())}"
            )
        weights = [setting.get(id2label[i], 1.0) for i in range(len(id2label))]
    return torch.tensor(weights, dtype=torch.float32)


def _balanced_sample_weights(train_labels: list[int]) -> list[float]:
    """Each row drawn with probability 1 / (classes × rows of its class): every class equally likely."""
    counts = np.bincount(train_labels)
    return (1.0 / counts[np.asarray(train_labels)]).tolist()


def _check_lbfgs_has_features(recipe: Recipe, on_features: bool, augments: bool) -> None:
    """An L-BFGS head is fitted on features computed once; without them it would silently train as a linear head."""
    if recipe.strategy.head.type != "lbfgs" or on_features:
        return
    why = (
        "data.augmentation draws new training images every epoch: set data.augmentation.random_resized_crop and "
        "data.augmentation.horizontal_flip to false"
        if augments
        else "this model's classifier is not one linear layer on pooled features"
    )
    raise StrategyError(
        f"strategy.head.type 'lbfgs' fits features computed once per example, but {why} (or use head.type 'linear')"
    )


def _check_options(recipe: Recipe, accelerator: Accelerator) -> None:
    """Options that depend on the task or the launch fail before anything trains or is cleared."""
    for key, used in (
        ("class_weights", recipe.training.class_weights != "none"),
        ("balanced_sampler", recipe.training.balanced_sampler),
    ):
        if used and recipe.task not in ("text-classification", "image-classification"):
            raise TrainingError(f"training.{key} applies to single-label classification, not task {recipe.task!r}")
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if recipe.strategy.unfreeze_every and sharded:
        raise TrainingError("strategy.unfreeze_every is not supported under FSDP or DeepSpeed yet; launch with DDP")


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a weight per class: the weighted row losses summed, over the sum of the rows' weights."""
    return torch.nn.functional.cross_entropy(logits.float(), labels, weight=class_weight)


def optimizer_groups(model: torch.nn.Module, t: TrainingConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: biases and norms without weight decay, and with
    `training.layer_lr_decay` one learning rate per depth (strategies.parameter_depths): lr × decay^(depth − 1), so
    the head and the top layer train at lr and the embeddings lowest."""
    depths = parameter_depths(model) if t.layer_lr_decay else {}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth, decayed = depths.get(name, 0), parameter.ndim >= 2  # biases and norms are not decayed
        lr = t.lr * (t.layer_lr_decay or 1.0) ** max(depth - 1, 0)
        group = groups.setdefault((depth, not decayed), {"params": [], "weight_decay": 0.0, "lr": lr})
        group["weight_decay"] = t.weight_decay if decayed else 0.0
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def _not_yet_unfrozen(model: torch.nn.Module, unfreeze_at: dict[str, int] | None, epoch: int) -> list[Any]:
    """Gradual unfreezing: the parameters whose turn has not come. They stay trainable, so DDP wraps and all-reduces
    them from the start and the optimizer holds them; dropping their gradients before each step means AdamW neither
    moves, decays nor keeps moments for them until their epoch."""
    if not unfreeze_at:
        return []
    waiting = [p for name, p in model.named_parameters() if unfreeze_at.get(name, 0) > epoch]
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    logger.info(
        "epoch %d: %d of %d trainable tensors train (strategy.unfreeze_every)",
        epoch,
        trainable - len(waiting),
        trainable,
    )
    return waiting


def _warm_up_head(
    accelerator: Accelerator,
    model: torch.nn.Module,
    train_split: Any,
    tokenizer: Any,
    batch_size: int,
    cache: FeatureCache | None,
    recipe: Recipe,
    class_weight: torch.Tensor | None,
) -> None:
    """LP-FT: train the head alone on frozen pooled features (computed once, or read from the feature cache), so
    fine-tuning starts from a head that fits instead of a random one whose gradients would distort the backbone."""
    s, t = recipe.strategy, recipe.training
    pooled = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: B = 0, the base model
    pooled.to(accelerator.device)
    features = feature_datasets(accelerator, pooled, DatasetDict({"train": train_split}), tokenizer, batch_size, cache)
    rows = features["train"][:]
    x, y = rows["features"].to(accelerator.device), rows["labels"].to(accelerator.device)
    head = FeatureHead(pooled)
    optimizer = torch.optim.AdamW(
        [p for p in head.parameters() if p.requires_grad], lr=s.warmup_head_lr, weight_decay=t.weight_decay
    )
    generator = torch.Generator().manual_seed(t.seed)
    head.train()
    for _ in range(s.warmup_head_epochs):
        for batch in torch.randperm(len(y), generator=generator).split(t.batch_size):
            output = head(x[batch], y[batch])
            loss = output.loss if class_weight is None else weighted_loss(output.logits, y[batch], class_weight)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    with torch.no_grad():
        # Every rank ran the same steps on the same features; rank 0's head becomes everyone's, bit for bit.
        for parameter in head.parameters():
            parameter.copy_(broadcast(parameter.detach().clone(), from_process=0))
    logger.info("head warm-up: %d epochs on frozen features, last loss %.4f", s.warmup_head_epochs, loss.item())


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
    """What training changes: the trainable parameters, and the running statistics of normalisation layers
    (BatchNorm keeps updating them in train mode; weights of the best epoch with the last epoch's statistics score
    worse than either: measured on ants/bees full fine-tuning, 0.889 instead of the best epoch's 0.935)."""
    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._NormBase):
            for buffer_name, buffer in module.named_buffers(recurse=False):
                if buffer is not None:
                    state[f"{module_name}.{buffer_name}"] = buffer.detach().cpu().clone()
    return state


@ownership.releasing_output_locks
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
    ownership.claim_output_dir(out, recipe, overwrite=overwrite, resume=resume)
    accelerator.wait_for_everyone()
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    _use_the_cpu_cores(accelerator)
    set_seed(t.seed)

    # Downloads and dataset caches are written once, by the main process, then read by the others.
    with accelerator.main_process_first():
        model_source = resolve_model(recipe.model, recipe.model_revision)
        data = prepare_data(recipe)
        tokenizer = load_tokenizer(model_source.location, recipe)  # an image processor for image tasks
        if is_image_task(recipe.task):
            # Images are decoded and transformed lazily, batch by batch; the train transform augments per epoch.
            tokenized, augment = transformed_splits(data.splits, tokenizer, recipe)
        else:
            tokenized, augment = tokenize_splits(data.splits, tokenizer, recipe.data.max_length), None
    pooling = choose_pooling(recipe, Path(model_source.location))
    model = build_model(recipe, model_source.location, data.labels.id2label, pooling)
    model = apply_strategy(model, recipe)
    trainable, total = count_parameters(model)
    # Only now that the recipe, data, model and strategy have all loaded: a bad input never costs the old run.
    _check_metric_for_best(recipe, data.splits["validation"]["label"], len(data.labels.id2label))
    _check_options(recipe, accelerator)
    augments = is_image_task(recipe.task) and recipe.data.augmentation.active
    on_features = can_use_cached_features(model, augments)
    _check_lbfgs_has_features(recipe, on_features, augments)
    train_labels = list(data.splits["train"]["label"])
    class_weight = _class_weights(recipe, train_labels, data.labels.id2label)
    class_weight = None if class_weight is None else class_weight.to(accelerator.device)
    # Created, locked for this run, marked and (--overwrite) cleared of the earlier run's files only now.
    ownership.take_output_dir(out, accelerator, overwrite=overwrite, resume=resume)
    accelerator.wait_for_everyone()

    eval_batch = t.eval_batch_size or t.batch_size * 2
    full_model, fitted_head = model, None
    uses_features = recipe.strategy.warmup_head_epochs or on_features
    cache = (
        FeatureCache.for_run(recipe, model_source, tokenizer, pooling, data.splits, model) if uses_features else None
    )
    if recipe.strategy.warmup_head_epochs and not resume:  # a resumed run restores its warmed-up head
        _warm_up_head(accelerator, model, tokenized["train"], tokenizer, eval_batch, cache, recipe, class_weight)
    if augments and recipe.strategy.kind == "head":
        logger.info("data.augmentation draws new training images every epoch: the frozen backbone runs every epoch")
    if on_features:
        # Feature extraction proper: the frozen backbone runs once per example, not once per example per epoch;
        # the loop below then trains the model's own classifier on the pooled features.
        model.to(accelerator.device)
        tokenized = feature_datasets(accelerator, model, tokenized, tokenizer, eval_batch, cache)
        model, collator, lengths = feature_head(model), collate_features, None
        if recipe.strategy.head.type == "lbfgs":
            # Fitted in one go, so the epoch loop below has nothing left to do.
            weights = None if class_weight is None else dict(enumerate(class_weight.tolist()))
            metric = recipe.training.metric_for_best or TASKS[recipe.task].metric_for_best
            fitted_head = fit_logistic_head(
                accelerator, model.classifier, tokenized["train"], recipe.strategy.head, weights, metric
            )
    elif augment is not None:
        collator, lengths = collate_images, None
    else:
        collator = DataCollatorWithPadding(tokenizer)
        lengths = tokenized["train"]["length"] if t.group_by_length else None
        tokenized = tokenized.remove_columns("length")
    global_batch = t.batch_size * accelerator.num_processes * t.grad_accum
    sample_weights = _balanced_sample_weights(train_labels) if t.balanced_sampler else None
    train_loader, train_generator = _make_loader(
        tokenized["train"], t.batch_size, collator, True, lengths, t.seed, global_batch, sample_weights
    )
    eval_loaders = {
        name: _make_loader(tokenized[name], eval_batch, collator, False, None, t.seed)[0]
        for name in tokenized
        if name != "train"
    }

    # Fused AdamW (one kernel for every tensor; the Trainer's default too) where the parameters' device has it.
    fused = accelerator.device.type in ("cpu", "cuda") and accelerator.distributed_type != DistributedType.DEEPSPEED
    optimizer = torch.optim.AdamW(optimizer_groups(model, t), lr=t.lr, fused=fused)
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

    state, restored_from = checkpoints.LoopState(), None
    if resume:
        state, restored_from = checkpoints.restore_latest(accelerator, out, recipe)
        # A killed run may have logged evaluations after its newest checkpoint; they are redone from here, so the log
        # restarts from the checkpoint's history instead of holding them twice.
        rewrite_jsonl(out / "train_log.jsonl", state.history, accelerator.is_main_process)
    if accelerator.is_main_process:
        accelerator.init_trackers("hf_transfer", config=_flat_config(recipe.model_dump(mode="json")))

    unfreeze_at = unfreeze_schedule(accelerator.unwrap_model(model), recipe)
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
        append_jsonl(log_path, entry, accelerator.is_main_process)
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

    epochs = t.epochs
    if fitted_head:  # an L-BFGS head is fitted already: score it once (the log's one entry) and train no epochs
        run_evaluation(0)
        epochs = 0
    progress = tqdm(
        total=total_steps, initial=state.global_step, disable=not accelerator.is_main_process, desc="train"
    )
    try:
        for epoch in range(state.epoch, epochs):
            model.train()
            keep_frozen_norms_in_eval(model)
            # Re-seeded per epoch so the batch order is the same whether or not the run was resumed.
            train_generator.manual_seed(t.seed + epoch)
            if augment is not None:
                augment.epoch = epoch  # each epoch draws new crops, the same ones on a rerun or resume
            waiting = _not_yet_unfrozen(accelerator.unwrap_model(model), unfreeze_at, epoch)
            loader = train_loader
            if state.step_in_epoch:
                loader = skip_first_batches(train_loader, state.step_in_epoch)
            tick = time.perf_counter()
            for batch in loader:
                labels = batch["labels"]
                with accelerator.accumulate(model):
                    output = model(**batch)
                    loss = output.loss if class_weight is None else weighted_loss(output.logits, labels, class_weight)
                    if not torch.isfinite(loss.detach()).all():
                        raise TrainingError(
                            f"loss is {loss.item()} at epoch {epoch}, step {state.global_step}; stopping. The last "
                            f"good checkpoint stays in {out / 'checkpoints'}. Lower training.lr, or check the data."
                        )
                    accelerator.backward(loss)
                    for parameter in waiting:  # gradual unfreezing: not this parameter's epoch yet
                        parameter.grad = None
                    if accelerator.sync_gradients and t.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state.step_in_epoch += 1
                samples_seen += len(labels) * accelerator.num_processes
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

    # Restore the best weights (trainable parameters and normalisation statistics), then score every labelled split.
    unwrapped = accelerator.unwrap_model(model)
    with torch.no_grad():
        current = {**dict(unwrapped.named_parameters()), **dict(unwrapped.named_buffers())}
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
        "head": recipe.strategy.head.type,
        **{f"head_{k}": v for k, v in (fitted_head or {}).items()},
        "epochs_run": len({h["epoch"] for h in state.history}),
        "best_epoch": state.best_epoch,
        "steps": state.global_step,
        # Rows and files the data loading left out (empty texts, unreadable or excluded images), by reason.
        **{f"skipped_{reason}": count for reason, count in sorted(data.labels.skipped.items()) if count},
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
    ownership.record_output_files(out)
    # Trackers are finished here, but the process group is left up (end_training() would destroy it): compare and
    # advise run several trainings in one launch, and the command line ends the group once, on its way out.
    for tracker in accelerator.trackers:
        tracker.finish()
    return out


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def install_sigterm_as_interrupt() -> None:
    """`accelerate launch` passes SIGTERM on to its workers; treat it like Ctrl-C so a checkpoint is saved."""
    signal.signal(signal.SIGTERM, _interrupt)
