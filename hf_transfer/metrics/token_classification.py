"""Offline `evaluate` metric for BIO tagging: entity-level precision/recall/F1 (micro, the CoNLL convention, and macro
over entity types), per entity type, and token accuracy, through seqeval (conlleval's rules)."""

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report

_DESCRIPTION = "Entity-level P/R/F1 (micro and macro), per entity type, and token accuracy (seqeval, conlleval mode)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of BIO tags per sentence (`O`, `B-PER`, `I-PER`, ...).
    references: the true tags, the same lengths.
Returns:
    precision, recall, f1 (entity-level micro: the CoNLL figure), precision_macro, recall_macro, f1_macro (the mean
    over entity types), accuracy (token level), entities (true entities), per_class {type: {precision, recall, f1,
    support}}.
"""


class TokenClassification(evaluate.Metric):
    def _info(self):
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": tags, "references": tags}),
        )

    def _compute(self, predictions, references, types=None):
        report = classification_report(references, predictions, output_dict=True, zero_division=0)
        micro, macro = report.pop("micro avg"), report.pop("macro avg")
        report.pop("weighted avg", None)
        # Types absent from both (a small split) still get a row, so every run reports the same table.
        per_class = {
            name: report.get(name, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
            for name in sorted(set(types or []) | set(report))
        }
        return {
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
            "precision_macro": float(macro["precision"]),
            "recall_macro": float(macro["recall"]),
            "f1_macro": float(macro["f1-score"]),
            "accuracy": float(accuracy_score(references, predictions)),
            "entities": int(micro["support"]),
            "per_class": {
                name: {
                    "precision": float(v["precision"]),
                    "recall": float(v["recall"]),
                    "f1": float(v["f1-score"]),
                    "support": int(v["support"]),
                }
                for name, v in per_class.items()
            },
        }
