"""Helpers shared by the Triton kernels: one row layout for padded and jagged input (host
side: ``row_layout``; in-kernel: ``row_extent``, ``tile_rows``, ``load_tile``, ``store_tile``),
and autotune configurations that collapse to a single one under the interpreter."""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
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


# ---- row layout inside a kernel: one program per history row (padded and jagged alike) ----

@triton.jit
def row_extent(start_ptr, len_ptr, b):
    """(first flat row, number of behaviours) of history row b."""
    return tl.load(start_ptr + b), tl.load(len_ptr + b)


@triton.jit
def tile_rows(start, n, t, BLOCK_L: tl.constexpr):
    """Positions j [BLOCK_L] of the tile starting at t, their validity (j < n) and flat
    row indices (int64, so B·L beyond 2^31 elements cannot overflow)."""
    j = t + tl.arange(0, BLOCK_L)
    return j, j < n, start + j.to(tl.int64)


@triton.jit
def tile_mask(valid, C, BLOCK_C: tl.constexpr):
    """[BLOCK_L, BLOCK_C] mask of valid rows × the C real columns."""
    c = tl.arange(0, BLOCK_C)
    return valid[:, None] & (c < C)[None, :]


@triton.jit
def tile_ptrs(ptr, rows, C, BLOCK_C: tl.constexpr):
    """[BLOCK_L, BLOCK_C] addresses of the tile's rows in a flat [R, C] tensor."""
    c = tl.arange(0, BLOCK_C)
    return ptr + rows[:, None] * C + c[None, :]


@triton.jit
def load_tile(ptr, rows, valid, C, BLOCK_C: tl.constexpr):
    """The tile's rows of a flat [R, C] tensor as fp32 [BLOCK_L, BLOCK_C]; invalid rows and
    padded columns read as 0 (padding positions are never touched)."""
    return tl.load(tile_ptrs(ptr, rows, C, BLOCK_C), mask=tile_mask(valid, C, BLOCK_C), other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, rows, valid, x, C, BLOCK_C: tl.constexpr):
    """Write fp32 x [BLOCK_L, BLOCK_C] to the tile's rows of a flat [R, C] tensor."""
    tl.store(tile_ptrs(ptr, rows, C, BLOCK_C), x.to(ptr.dtype.element_ty), mask=tile_mask(valid, C, BLOCK_C))
