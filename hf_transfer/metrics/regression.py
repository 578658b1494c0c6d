"""Offline `evaluate` metric for regression: MSE, MAE, Pearson and Spearman correlation."""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr

_DESCRIPTION = "Mean squared error, mean absolute error, Pearson and Spearman correlation."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted values.
    references: true values.
Returns:
    mse, mae, pearson, spearman (correlations are 0.0 when either side is constant).
"""


class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
        error = predictions - references
        constant = np.ptp(predictions) == 0 or np.ptp(references) == 0
        return {
            "mse": float(np.mean(error**2)),
            "mae": float(np.mean(np.abs(error))),
            "pearson": 0.0 if constant else float(pearsonr(predictions, references)[0]),
            "spearman": 0.0 if constant else float(spearmanr(predictions, references)[0]),
        }
