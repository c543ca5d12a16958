"""Input checks shared by the dispatchers: clear errors instead of index errors deep inside a kernel."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


class KernelInputError(ValueError):
    """Inputs of a kernels op have the wrong shape, dtype, device or content."""


def check_float(name: str, x: Tensor, dims: int, dtype: Optional[torch.dtype] = None,
                device: Optional[torch.device] = None) -> None:
    if not isinstance(x, Tensor):
        raise KernelInputError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != dims:
        raise KernelInputError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise KernelInputError(f"{name} must be floating point, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise KernelInputError(f"{name} has dtype {x.dtype}, expected {dtype} (all float inputs must share one dtype)")
    if device is not None and x.device != device:
        raise KernelInputError(f"{name} is on {x.device}, expected {device} (all inputs must share one device)")
    # one reduction pass (no [B, L, D] bool tensor): a NaN anywhere makes the sum NaN; only
    # then (or on ±inf overflow) run the exact check. The plain isnan().any() cost 7-14% of a
    # DIN/DARE training step on CPU.
    if not bool(torch.isfinite(x.sum())) and bool(torch.isnan(x).any()):
        raise KernelInputError(f"{name} contains NaN")


def resolve_rows(keys: Tensor, lengths: Optional[Tensor], offsets: Optional[Tensor],
                 batch: int) -> Tuple[bool, Tensor, Optional[Tensor]]:
    """Validate the padded (keys [B, L, D] + lengths [B]) or jagged (keys [N, D] + offsets
    [B + 1]) layout; returns (is_jagged, lengths [B], offsets or None)."""
    if (lengths is None) == (offsets is None):
        raise KernelInputError("give exactly one of lengths (padded [B, L, D] input) or offsets (jagged [N, D] input)")
    if offsets is not None:
        if keys.dim() != 2:
            raise KernelInputError(f"jagged keys must be [N, D], got shape {tuple(keys.shape)}")
        if offsets.dim() != 1 or offsets.shape[0] != batch + 1:
            raise KernelInputError(f"offsets must be [B + 1] = [{batch + 1}], got shape {tuple(offsets.shape)}")
        if offsets.dtype not in (torch.int32, torch.int64):
            raise KernelInputError(f"offsets must be int32 or int64, got {offsets.dtype}")
        if offsets.device != keys.device:
            raise KernelInputError(f"offsets are on {offsets.device}, keys on {keys.device}")
        if int(offsets[0]) != 0:
            raise KernelInputError(f"offsets must start at 0, got {int(offsets[0])}")
        steps = offsets[1:] - offsets[:-1]
        if bool((steps < 0).any()):
            raise KernelInputError(f"offsets must be non-decreasing; first decrease at row {int(torch.nonzero(steps < 0)[0])}")
        if int(offsets[-1]) != keys.shape[0]:
            raise KernelInputError(f"offsets end at {int(offsets[-1])} but there are {keys.shape[0]} values")
        return True, steps.to(torch.int64), offsets
    if keys.dim() != 3 or keys.shape[0] != batch:
        raise KernelInputError(f"padded keys must be [B={batch}, L, D], got shape {tuple(keys.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise KernelInputError(f"lengths must be [B] = [{batch}], got shape {tuple(lengths.shape)}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise KernelInputError(f"lengths must be int32 or int64, got {lengths.dtype}")
    if lengths.device != keys.device:
        raise KernelInputError(f"lengths are on {lengths.device}, keys on {keys.device}")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > keys.shape[1]):
        raise KernelInputError(f"lengths must lie in [0, L={keys.shape[1]}], got [{int(lengths.min())}, {int(lengths.max())}]")
    return False, lengths.to(torch.int64), None


def jagged_to_padded(values: Tensor, offsets: Tensor, lengths: Tensor, max_length: Optional[int] = None) -> Tensor:
    """values [N, D] + offsets [B + 1] → [B, L, D] (right-padded with zeros)."""
    batch = lengths.shape[0]
    length = int(lengths.max()) if max_length is None and batch else (max_length or 0)
    positions = torch.arange(length, device=values.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)
    index = (offsets[:-1].unsqueeze(1).to(torch.int64) + positions.unsqueeze(0))[mask]
    out = values.new_zeros((batch, length) + tuple(values.shape[1:]))
    out[mask] = values[index]
    return out


def check_attention_inputs(query: Tensor, keys: Tensor, values: Optional[Tensor], lengths: Optional[Tensor],
                           offsets: Optional[Tensor]) -> Tuple[bool, Tensor, Optional[Tensor]]:
    """Shared checks of a single-query attention op: query [B, D]; keys padded [B, L, D] +
    lengths or jagged [N, D] + offsets; values (optional) in the keys' layout. Returns
    ``resolve_rows``'s (is_jagged, lengths, offsets)."""
    check_float("query", query, 2)
    jagged, row_lengths, offsets = resolve_rows(keys, lengths, offsets, query.shape[0])
    check_float("keys", keys, keys.dim(), query.dtype, query.device)
    if keys.shape[-1] != query.shape[-1]:
        raise KernelInputError(f"keys width {keys.shape[-1]} != query width {query.shape[-1]}")
    if values is not None:
        check_float("values", values, keys.dim(), query.dtype, query.device)
        if values.shape[:-1] != keys.shape[:-1]:
            raise KernelInputError(f"values {tuple(values.shape)} must match keys {tuple(keys.shape)} except the last dim")
    return jagged, row_lengths, offsets


def choose_backend(backend: str, *tensors: Tensor, allowed: tuple = ("torch", "triton")) -> str:
    """"auto" → "triton" for CUDA tensors when triton imports, else "torch"; ``allowed`` lists
    the explicit backends the op accepts."""
    if backend not in ("auto",) + allowed:
        raise KernelInputError(f"backend must be one of {('auto',) + allowed}, got {backend!r}")
    if backend != "auto":
        return backend
    if all(t.is_cuda for t in tensors) and triton_available():
        return "triton"
    return "torch"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True
