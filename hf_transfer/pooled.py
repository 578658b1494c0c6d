"""The project's own architecture: the pooled classifier's source (`modeling_hf_transfer.py`, filled in per backbone
family), the class built from exactly that source, and marking a model so transformers loads it from its folder."""

from __future__ import annotations

import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: trust.py reads this module's names without loading transformers
    from transformers import PreTrainedModel

POOLED_MODEL_FILE = "modeling_hf_transfer.py"
POOLED_MODEL_CLASS = "PooledModelForSequenceClassification"


def pooled_model_source(config: Any) -> str:
    """The pooled classifier's source, with its two constants filled in for this backbone family."""
    template = (Path(__file__).parent / POOLED_MODEL_FILE).read_text(encoding="utf-8")
    prefix = _base_model_prefix(config)
    source = template.replace(
        'BACKBONE_CONFIG_CLASS = "BertConfig"', f'BACKBONE_CONFIG_CLASS = "{type(config).__name__}"'
    )
    return source.replace('BACKBONE_PREFIX = "bert"', f'BACKBONE_PREFIX = "{prefix}"')


def _base_model_prefix(config: Any) -> str:
    from transformers import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    native = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config), None)
    return getattr(native, "base_model_prefix", None) or config.model_type.replace("-", "_")


def pooled_model_class(config: Any) -> type[PreTrainedModel]:
    """Build the pooled classifier class from the same source that is written into the output folder."""
    module = types.ModuleType("modeling_hf_transfer")
    exec(compile(pooled_model_source(config), POOLED_MODEL_FILE, "exec"), module.__dict__)
    return getattr(module, POOLED_MODEL_CLASS)


def mark_pooled_for_export(model: PreTrainedModel) -> None:
    """Point the config at the modeling file written beside the weights, so plain transformers can load it."""
    model.config.auto_map = {"AutoModelForSequenceClassification": f"modeling_hf_transfer.{POOLED_MODEL_CLASS}"}


def is_pooled(model: PreTrainedModel) -> bool:
    return type(model).__name__ == POOLED_MODEL_CLASS
