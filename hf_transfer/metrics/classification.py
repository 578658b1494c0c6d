"""Offline `evaluate` metric for single/multi-label classification: accuracy, P/R/F1 (macro, micro), MCC, report."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, matthews_corrcoef, precision_recall_fscore_support

_DESCRIPTION = (
    "Accuracy, precision/recall/F1 (macro and micro), Matthews correlation, per-class report, confusion matrix."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted label ids (single-label) or 0/1 vectors (config "multilabel").
    references: true label ids, or 0/1 vectors.
    labels: optional list of all label ids, so classes absent from a split still get a row.
Returns:
    accuracy (exact match for multi-label), precision/recall/f1 macro and micro, mcc (single-label),
    per_class {id: {precision, recall, f1, support}}, confusion_matrix (single-label, rows = truth).
"""


class Classification(evaluate.Metric):
    def _info(self):
        multilabel = self.config_name == "multilabel"
        value = datasets.Sequence(datasets.Value("int32")) if multilabel else datasets.Value("int32")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references, labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        multilabel = self.config_name == "multilabel"
        if labels is None:
            labels = list(range(references.shape[1])) if multilabel else sorted(set(references) | set(predictions))
        scores = {"accuracy": float(accuracy_score(references, predictions))}
        for average in ("macro", "micro"):
            p, r, f, _ = precision_recall_fscore_support(
                references, predictions, labels=labels, average=average, zero_division=0
            )
            scores.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
        p, r, f, support = precision_recall_fscore_support(
            references, predictions, labels=labels, average=None, zero_division=0
        )
        scores["per_class"] = {
            int(label): {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        }
        if not multilabel:
            scores["mcc"] = float(matthews_corrcoef(references, predictions))
            scores["confusion_matrix"] = confusion_matrix(references, predictions, labels=labels).tolist()
        return scores
