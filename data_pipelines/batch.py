"""The typed batch every model consumes (the "Batch" data contract).

Padding convention, used everywhere in the project:
    * histories are **most-recent-last** and **right-padded**: for row ``b`` the valid
      behaviours are ``hist_item[b, :lengths[b]]`` (oldest first, newest at
      ``lengths[b] - 1``) and positions ``>= lengths[b]`` hold id 0 (padding);
    * the jagged form stores the same rows back to back: row ``b`` is
      ``values[offsets[b]:offsets[b + 1]]`` with ``offsets`` of shape ``[B + 1]``,
      ``offsets[0] == 0`` and ``offsets[-1] == len(values)``.

Right padding makes the padded and jagged forms share the same in-row index ``j``
(``padded[b, j] == values[offsets[b] + j]``), which is what the kernels rely on.

Only torch is imported here, so ``models/`` can depend on this contract without
pulling in pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Batch:
    """A batch of (user, history, target) examples.

    Shapes (B = batch size, L = padded history length, N = total behaviours):

    Always present:
        user:            [B]  int64  user index (vocabulary id, 0 = padding, 1 = unknown)
        target_item:     [B]  int64  candidate item id
        target_category: [B]  int64  candidate category id
        label:           [B]  float32 in {0, 1}
        lengths:         [B]  int64  number of valid history behaviours per row (0 allowed)

    Padded form (``is_jagged == False``):
        hist_item, hist_category, hist_behavior: [B, L] int64, right-padded with 0
    Jagged form (``is_jagged == True``):
        hist_item, hist_category, hist_behavior: [N] int64
        offsets:         [B + 1] int64

    Optional:
        hist_timestamp:  same layout as hist_item, int64 seconds (or positions when a
                         source has no times)
        sample_index:    [B] int64 row of the sample table (for joining predictions back)
    """

    user: Tensor
    target_item: Tensor
    target_category: Tensor
    label: Tensor
    lengths: Tensor
    hist_item: Tensor
    hist_category: Tensor
    hist_behavior: Optional[Tensor] = None
    hist_timestamp: Optional[Tensor] = None
    offsets: Optional[Tensor] = None
    sample_index: Optional[Tensor] = None

    @property
    def is_jagged(self) -> bool:
        return self.offsets is not None

    @property
    def size(self) -> int:
        return int(self.target_item.shape[0])

    @property
    def max_length(self) -> int:
        """L of the padded form (the longest row for a jagged batch)."""
        if self.is_jagged:
            return int(self.lengths.max().item()) if self.size else 0
        return int(self.hist_item.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {
            f.name: (getattr(self, f.name).to(device, non_blocking=non_blocking)
                     if getattr(self, f.name) is not None else None)
            for f in fields(self)
        }
        return Batch(**moved)

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: (getattr(self, f.name).pin_memory()
                                 if getattr(self, f.name) is not None else None)
                        for f in fields(self)})

    def history_mask(self) -> Tensor:
        """[B, L] bool, True on valid behaviours (padded form only)."""
        if self.is_jagged:
            raise ValueError("history_mask() needs the padded form; call to_padded() first")
        positions = torch.arange(self.hist_item.shape[1], device=self.hist_item.device)
        return positions.unsqueeze(0) < self.lengths.unsqueeze(1)

    def to_padded(self, max_length: Optional[int] = None) -> "Batch":
        """Jagged → padded ([N] + offsets → [B, L]); a padded batch is returned as is."""
        if not self.is_jagged:
            return self
        length = self.max_length if max_length is None else max_length
        if self.size and int(self.lengths.max()) > length:
            raise ValueError(f"a row has {int(self.lengths.max())} behaviours, more than max_length={length}")
        positions = torch.arange(length, device=self.lengths.device)
        mask = positions.unsqueeze(0) < self.lengths.unsqueeze(1)            # [B, L]
        gather = (self.offsets[:-1].unsqueeze(1) + positions.unsqueeze(0))[mask]

        def pad(values: Optional[Tensor]) -> Optional[Tensor]:
            if values is None:
                return None
            out = values.new_zeros((self.size, length))
            out[mask] = values[gather]
            return out

        return replace(self, hist_item=pad(self.hist_item), hist_category=pad(self.hist_category),
                       hist_behavior=pad(self.hist_behavior), hist_timestamp=pad(self.hist_timestamp),
                       offsets=None)

    def to_jagged(self) -> "Batch":
        """Padded → jagged ([B, L] → [N] + [B + 1] offsets); a jagged batch is returned as is."""
        if self.is_jagged:
            return self
        mask = self.history_mask()
        offsets = torch.zeros(self.size + 1, dtype=torch.int64, device=self.lengths.device)
        offsets[1:] = torch.cumsum(self.lengths, 0)

        def flat(values: Optional[Tensor]) -> Optional[Tensor]:
            return None if values is None else values[mask]

        return replace(self, hist_item=flat(self.hist_item), hist_category=flat(self.hist_category),
                       hist_behavior=flat(self.hist_behavior), hist_timestamp=flat(self.hist_timestamp),
                       offsets=offsets)
