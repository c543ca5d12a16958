"""Helpers shared by the Triton kernels: one row layout for padded and jagged input, and
autotune configurations that collapse to a single one under the interpreter."""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch
import triton
from torch import Tensor


def interpreted() -> bool:
    """True under TRITON_INTERPRET=1 (CPU tensors run through the Triton interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_configs(blocks=(32, 64, 128), warps=(4, 8)) -> List[triton.Config]:
    """Autotune space over the L tile; a single small config under the interpreter."""
    if interpreted():
        return [triton.Config({"BLOCK_L": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_L": b}, num_warps=w) for b in blocks for w in warps]


def pow2(n: int, floor: int = 16) -> int:
    """Power-of-two tile width >= n (and >= floor: tl.dot needs 16 on each side)."""
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def row_layout(x: Tensor, lengths: Tensor, offsets: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, int]:
    """View padded [B, L, D] or jagged [N, D] as flat rows [R, D] plus per-row start
    (int64 [B]) and length (int32 [B]); returns (flat, starts, lengths, L_max).

    Padded row b starts at b·L; jagged row b at offsets[b]. The kernels read only
    positions start .. start + length − 1, so padding is never touched.
    """
    if offsets is None:
        batch, length = x.shape[0], x.shape[1]
        starts = torch.arange(batch, device=x.device, dtype=torch.int64) * length
        flat = x.reshape(batch * length, x.shape[-1])
        width = length
    else:
        starts = offsets[:-1].to(torch.int64)
        flat = x
        width = int(lengths.max()) if lengths.numel() else 0
    return flat.contiguous(), starts.contiguous(), lengths.to(torch.int32).contiguous(), width
