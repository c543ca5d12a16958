"""Lightning data module over a built dataset: one SampleLoader per split, sharded by rank."""

from __future__ import annotations

from typing import Optional

import lightning as L
from torch.utils.data import DataLoader

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader

from .config import DataSection


class SampleDataModule(L.LightningDataModule):
    """Train (shuffled, seeded per epoch), valid and test loaders of ``Batch`` (both model
    families; the batches carry the run's ``data.fields``).

    Sharding by DDP rank happens inside SampleLoader (the rank and world size come from the
    trainer); sharding by worker happens per DataLoader worker.
    """

    def __init__(self, dataset: BuiltDataset, config: DataSection, seed: int = 0) -> None:
        super().__init__()
        self.dataset, self.config, self.seed = dataset, config, seed
        self.train_loader: Optional[SampleLoader] = None

    def _rank(self) -> "tuple[int, int]":
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: str, batch_size: int, shuffle: bool, drop_last: bool = False,
                prefixes: str = "all") -> SampleLoader:
        rank, world = self._rank()
        return SampleLoader(self.dataset, split, batch_size, max_length=self.config.max_length, form=self.config.form,
                            shuffle=shuffle, seed=self.seed, rank=rank, world_size=world, drop_last=drop_last,
                            shuffle_block=self.config.shuffle_block, fields=self.config.fields, prefixes=prefixes)

    def _wrap(self, loader: SampleLoader) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(loader, batch_size=None, num_workers=workers, persistent_workers=False,
                          prefetch_factor=4 if workers else None)

    def train_dataloader(self) -> DataLoader:
        # drop the last partial training batch: a batch of one row breaks BatchNorm and Dice
        # statistics; the shuffle changes every epoch, so no sample is left out for good
        self.train_loader = self._loader("train", self.config.batch_size, shuffle=True, drop_last=True,
                                         prefixes=self.config.train_prefixes)
        return self._wrap(self.train_loader)

    def val_dataloader(self) -> DataLoader:
        return self._wrap(self._loader("valid", self.config.eval_batch_size, shuffle=False))

    def test_dataloader(self) -> DataLoader:
        return self._wrap(self._loader("test", self.config.eval_batch_size, shuffle=False))
