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


if __name__ == "__main__":
    job, recipe_path, out_dir = sys.argv[1:]
    {"calls": backbone_calls, "weights": weights_per_checkpoint}[job](Path(recipe_path), Path(out_dir))
