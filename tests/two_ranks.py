"""Run by `accelerate launch` in two CPU processes (tests call it through conftest.run_two_ranks): training jobs
that record, per rank, what a test asserts afterwards. Usage: two_ranks.py JOB RECIPE OUT."""

import json
import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file
from transformers import BertModel, ResNetModel

from hf_transfer import checkpoints
from hf_transfer.recipe import load_recipe
from hf_transfer.train import train


def backbone_calls(recipe: Path, out: Path) -> None:
    """One run: how often did this rank's backbone (BERT, or the tiny test ResNet) run a forward pass?"""
    calls = []
    for backbone in (BertModel, ResNetModel):

        def counted(self, *args, _original=backbone.forward, **kwargs):
            calls.append(1)
            return _original(self, *args, **kwargs)

        backbone.forward = counted
    train(load_recipe(recipe, output_dir=str(out)))
    (out / f"calls-{PartialState().process_index}.json").write_text(json.dumps(len(calls)))


def weights_per_checkpoint(recipe: Path, out: Path) -> None:
    """Each rank saves its own copy of the weights at every checkpoint (every epoch): the ranks must agree."""
    original = checkpoints.save

    def save(accelerator, output_dir, recipe, state, best_weights, keep):
        model = accelerator.unwrap_model(accelerator._models[0])
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.state_dict().items()}
        save_file(tensors, str(out / f"rank{accelerator.process_index}-epoch{state.epoch}.safetensors"))
        return original(accelerator, output_dir, recipe, state, best_weights, keep)

    checkpoints.save = save
    train(load_recipe(recipe, output_dir=str(out / "run")))


def token_split(folder: Path) -> tuple:
    """A token-classification output folder's test sentences, ordered so that batches of 4 alternate between the
    shortest and the longest left (rank 0 gets the short batches, rank 1 the long ones), 21 of them (6 batches, the
    last of one sentence): (encoded split, model, task, number of tags)."""
    from datasets import DatasetDict
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from hf_transfer.tasks import task_for

    recipe = load_recipe(folder / "recipe.yaml")
    task = task_for(recipe.task)
    data = task.prepare_data(recipe)
    test = data.splits["test"]
    by_length = sorted(range(len(test)), key=lambda i: len(test[i]["tokens"]))
    order = [i for k in range(0, 12, 4) for i in by_length[k : k + 4] + by_length[::-1][k : k + 4]][:20]
    order.append(by_length[12])
    encoded = task.encode(DatasetDict({"test": test.select(order)}), AutoTokenizer.from_pretrained(folder), recipe)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    return encoded, model, task, len(data.labels.id2label)


def score_tokens(accelerator, encoded, model, task, num_labels: int) -> tuple[dict, list]:
    """The loop's own evaluation of a token model on the split, 4 sentences a batch per process."""
    from hf_transfer.evaluation import evaluate_loader
    from hf_transfer.metrics import flat_scores
    from hf_transfer.sampling import make_loader

    loader, _ = make_loader(encoded.splits["test"], 4, encoded.collator, False, None, 0)
    model, loader = accelerator.prepare(model, loader)
    scores, _, predictions = evaluate_loader(accelerator, model, loader, task, num_labels)
    return flat_scores(scores), predictions.tolist()


def token_scores(recipe: Path, out: Path) -> None:
    """Each rank scores the token model of the folder holding `recipe` and records what it got."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    scores, predictions = score_tokens(accelerator, *token_split(recipe.parent))
    result = {"processes": accelerator.num_processes, "scores": scores, "predictions": predictions}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    job, recipe_path, out_dir = sys.argv[1:]
    jobs = {"calls": backbone_calls, "weights": weights_per_checkpoint, "tokens": token_scores}
    jobs[job](Path(recipe_path), Path(out_dir))
