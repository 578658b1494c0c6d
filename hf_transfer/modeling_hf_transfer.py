"""Self-contained pooled sequence classifier (mean or CLS pooling over any transformers encoder).

This file is copied into output folders whose head pools differently from the architecture's own class (mean pooling
on BERT, as all-MiniLM-L6-v2 was trained), so the saved model loads with plain transformers:
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`. It depends on torch and
transformers only; the two constants below are filled in for the backbone's family when the file is written.
"""

import torch
import transformers
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

BACKBONE_CONFIG_CLASS = "BertConfig"
BACKBONE_PREFIX = "bert"


class PooledModelForSequenceClassification(PreTrainedModel):
    """Encoder → pooling (`config.hf_transfer_pooling`: mean | cls; unit length if `config.hf_transfer_normalize`)
    → dropout → classifier: linear, or with one hidden layer when `config.hf_transfer_head_hidden` gives its width."""

    config_class = getattr(transformers, BACKBONE_CONFIG_CLASS)
    base_model_prefix = BACKBONE_PREFIX

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        backbone = AutoModel.from_config(config)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused by this head; left in, it would get no gradient under DDP
        setattr(self, BACKBONE_PREFIX, backbone)
        dropout = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        hidden = getattr(config, "hf_transfer_head_hidden", None)
        if hidden:
            self.classifier = nn.Sequential(
                nn.Linear(config.hidden_size, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, config.num_labels),
            )
        else:
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of the non-padding token states, or the first token's state; scaled to unit length when
        `config.hf_transfer_normalize` is set (as a sentence-transformers `Normalize` module does)."""
        if getattr(self.config, "hf_transfer_pooling", "mean") == "cls":
            pooled = hidden[:, 0]
        elif attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if getattr(self.config, "hf_transfer_normalize", False):
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = getattr(self, BACKBONE_PREFIX)(**inputs).last_hidden_state
        logits = self.classifier(self.dropout(self.pool(hidden, attention_mask)))
        loss = None if labels is None else self.loss_for(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def loss_for(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss: MSE for regression, BCE per label for multi-label, cross-entropy otherwise."""
        if self.config.problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        if self.config.problem_type == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits, labels)
