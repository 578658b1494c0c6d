"""hf_transfer: transfer learning as a one-file recipe (head, partial, LoRA or full) run by one Accelerate loop."""

from .recipe import Recipe, RecipeError, load_recipe

__version__ = "0.1.0"
__all__ = ["Recipe", "RecipeError", "load_recipe", "train", "load_run", "predict_texts", "evaluate_run", "publish"]


def __getattr__(name: str):
    # Heavy modules (torch, transformers) load only when their functions are used.
    if name == "train":
        from .train import train

        return train
    if name in ("load_run", "predict_texts", "evaluate_run"):
        from . import inference

        return getattr(inference, name)
    if name == "publish":
        from .hub import publish

        return publish
    raise AttributeError(name)
