"""No-learning baseline for DARE's protocol: score = share of the history with the target's category.

It measures how much of a dataset's test AUC the category signal alone explains (the planted
interests of the generated data are categories), i.e. how much room is left for a better search.

Usage: python bench/dare_category_baseline.py runs/data/dare_synthetic [runs/data/dare_ml100k ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader


def category_share_auc(data: str, split: str) -> tuple[int, float]:
    """(samples, AUC of the share of valid behaviours whose category equals the target's)."""
    dataset = BuiltDataset.open(data)
    scores, labels = [], []
    for batch in SampleLoader(dataset, split, 4096, max_length=dataset.max_length):
        same = (batch.hist_category == batch.target_category[:, None]) & batch.history_mask()
        scores.append((same.sum(1) / batch.lengths.clamp_min(1)).numpy())
        labels.append(batch.label.numpy())
    labels = np.concatenate(labels)
    return len(labels), float(roc_auc_score(labels, np.concatenate(scores)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for data in args.datasets:
        for split in ("valid", "test"):
            n, auc = category_share_auc(data, split)
            print(f"{data} {split}: {n} samples, category-share AUC {auc:.4f}")


if __name__ == "__main__":
    main()
