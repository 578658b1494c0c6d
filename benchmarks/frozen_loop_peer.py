"""The frozen head trained the plain way: the same mean-pooled all-MiniLM-L6-v2 model and linear head as
`recipes/sst2-minilm-head.yaml`, but the frozen backbone runs again on every batch of every epoch, as a plain training
loop does. Same data, optimizer, learning rate, schedule, batch size and epochs; length-grouped batches. Prints one
JSON line of figures. The control for hf_transfer's encode-once feature path."""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import DataCollatorWithPadding, get_scheduler  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402

from hf_transfer.recipe import load_recipe  # noqa: E402
from hf_transfer.sources import resolve_model  # noqa: E402
from hf_transfer.strategies import apply_strategy  # noqa: E402
from hf_transfer.tasks import build_model, prepare_data  # noqa: E402
from hf_transfer.tasks.text_classification import load_tokenizer, tokenize_splits  # noqa: E402


@torch.inference_mode()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = total = 0
    for batch in loader:
        labels = batch.pop("labels")
        right += int((model(**batch).logits.argmax(-1) == labels).sum())
        total += len(labels)
    return right / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    t = recipe.training
    torch.manual_seed(t.seed)
    source = resolve_model(recipe.model)
    data = prepare_data(recipe)
    tokenizer = load_tokenizer(source.location, recipe)
    tokenized = tokenize_splits(data.splits, tokenizer, recipe.data.max_length)
    model = apply_strategy(build_model(recipe, source.location, data.labels.id2label, "mean"), recipe)
    backbone = getattr(model, model.base_model_prefix)
    collator = DataCollatorWithPadding(tokenizer)
    lengths = tokenized["train"]["length"]
    splits = tokenized.remove_columns("length")
    sampler = LengthGroupedSampler(t.batch_size, lengths=lengths, generator=torch.Generator().manual_seed(t.seed))
    train_loader = DataLoader(splits["train"], batch_size=t.batch_size, sampler=sampler, collate_fn=collator)
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    dev = DataLoader(splits["validation"], batch_size=eval_batch, collate_fn=collator)
    test = DataLoader(splits["test"], batch_size=eval_batch, collate_fn=collator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    steps = t.epochs * len(train_loader)
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup * steps), num_training_steps=steps)
    best, best_state, train_s = -1.0, None, 0.0
    for _ in range(t.epochs):
        model.train()
        backbone.eval()  # frozen: no dropout inside it, the same features the encode-once path computes
        tick = time.perf_counter()
        for batch in train_loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        train_s += time.perf_counter() - tick
        score = accuracy(model, dev)
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in model.classifier.state_dict().items()}
    model.classifier.load_state_dict(best_state)
    result = {
        "dev_accuracy": accuracy(model, dev),
        "test_accuracy": accuracy(model, test),
        "train_s": round(train_s, 2),
        "wall_s": round(time.perf_counter() - STARTED, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
