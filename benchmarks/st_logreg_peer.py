"""The frozen-head peer a user writes by hand: sentence-transformers `encode` of SST-2's train, dev and test splits,
then scikit-learn LogisticRegressionCV (5-fold on train) on all-MiniLM-L6-v2. Prints one JSON line of figures."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

STARTED = time.perf_counter()  # before the heavy imports: they are part of what a user waits for

import numpy as np  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402


def read_split(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with train.tsv, dev.tsv, test.tsv")
    parser.add_argument("--model", required=True, help="all-MiniLM-L6-v2 folder (or Hub ID)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    encoder = SentenceTransformer(args.model, device="cpu")
    features, labels, encode_s = {}, {}, 0.0
    for split in ("train", "dev", "test"):
        texts, labels[split] = read_split(args.data / f"{split}.tsv")
        tick = time.perf_counter()
        features[split] = encoder.encode(texts, batch_size=args.batch_size)
        encode_s += time.perf_counter() - tick
    tick = time.perf_counter()
    classifier = LogisticRegressionCV(cv=5, max_iter=1000).fit(features["train"], labels["train"])
    fit_s = time.perf_counter() - tick
    result = {
        "dev_accuracy": float((classifier.predict(features["dev"]) == labels["dev"]).mean()),
        "test_accuracy": float((classifier.predict(features["test"]) == labels["test"]).mean()),
        "C": float(classifier.C_[0]),
        "encode_s": round(encode_s, 2),
        "fit_s": round(fit_s, 2),
        "wall_s": round(time.perf_counter() - STARTED, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
