"""Behaviour-to-interest (B2I) dynamic routing: MIND's and ComiRec-DR's capsule layer.

As ``CapsuleNetwork`` in THUDM/ComiRec ``src/model.py`` (the code both MIND's and
ComiRec-DR's published numbers come from)::

    ê[b, k, l]  = bilinear(e[b, l])                    [B, K, L, D]
    β[b, k, l]  = initial routing logits                 [B, K, L]   (not learned)
    repeat r times:
        w[b, k, l] = softmax_k(β[b, :, l]),  w = 0 on padded positions
        v[b, k]    = squash(Σ_l w[b, k, l] ê[b, k, l])
        β[b, k, l] += <ê[b, k, l], v[b, k]>              (not after the last iteration)

    squash(z) = ‖z‖² / (1 + ‖z‖²) · z / sqrt(‖z‖² + 1e-9)

Two bilinear maps (``bilinear_type`` 0 and 2 of the code):

* ``shared`` (MIND): one D × D matrix for every position and interest (``tf.layers.dense``
  tiled over K); routing logits start as truncated N(0, 1) draws, fresh at every call;
* ``per_position`` (ComiRec-DR): W ∈ R^{L × (K·D) × D} initialised N(0, 1), one map per
  (position, interest); routing logits start at 0.

With ``stop_gradient`` (the code's default) the intermediate iterations route on a
gradient-free copy of ê, and the routing logits carry no gradient either: only the last
iteration's Σ_l w ê (through ê) is differentiated.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

BILINEAR = ("shared", "per_position")
ROUTING_INITS = ("normal", "zeros")


def squash(z: Tensor, eps: float = 1e-9) -> Tensor:
    """[..., D] → [..., D]: ComiRec's squash (norm → ‖z‖² / (1 + ‖z‖²), zero stays zero)."""
    norm2 = z.pow(2).sum(-1, keepdim=True)
    return norm2 / (1 + norm2) / torch.sqrt(norm2 + eps) * z


class B2IRouting(nn.Module):
    """history [B, L, D] (padded entries zeroed), mask [B, L] → interests [B, K, D].

    Args:
        dim: D.
        max_length: L of the per-position bilinear map (positions 0 .. L−1, oldest first).
        num_interests: K.
        bilinear: ``shared`` (MIND) or ``per_position`` (ComiRec-DR).
        iterations: routing iterations r (3 in both papers' code).
        routing_init: ``normal`` (truncated N(0, 1), MIND) or ``zeros`` (ComiRec-DR);
            default: the bilinear type's choice in the code.
        stop_gradient: route on a gradient-free ê in the intermediate iterations.
    """

    def __init__(self, dim: int, max_length: int, num_interests: int, bilinear: str = "per_position",
                 iterations: int = 3, routing_init: Optional[str] = None, stop_gradient: bool = True) -> None:
        super().__init__()
        if bilinear not in BILINEAR:
            raise ValueError(f"bilinear must be one of {BILINEAR}, got {bilinear!r}")
        routing_init = routing_init or ("normal" if bilinear == "shared" else "zeros")
        if routing_init not in ROUTING_INITS:
            raise ValueError(f"routing_init must be one of {ROUTING_INITS}, got {routing_init!r}")
        if iterations < 1 or num_interests < 1:
            raise ValueError("iterations and num_interests must be >= 1")
        self.dim, self.num_interests, self.bilinear = dim, num_interests, bilinear
        self.iterations, self.routing_init, self.stop_gradient = iterations, routing_init, stop_gradient
        if bilinear == "shared":
            # tf.layers.dense(..., bias_initializer=None): the code's intent is no bias
            self.shared = nn.Linear(dim, dim, bias=False)
            self.weight = None
        else:
            self.shared = None
            self.weight = nn.Parameter(torch.randn(max_length, num_interests * dim, dim))

    def project(self, history: Tensor) -> Tensor:
        """ê: [B, L, D] → [B, K, L, D]."""
        b, length, d = history.shape
        if self.shared is not None:
            return self.shared(history).unsqueeze(1).expand(b, self.num_interests, length, d)
        if length > self.weight.shape[0]:
            raise ValueError(f"a history of {length} positions exceeds the routing's max_length "
                             f"{self.weight.shape[0]}")
        hat = torch.einsum("lod,bld->blo", self.weight[:length], history)            # [B, L, K·D]
        return hat.reshape(b, length, self.num_interests, d).transpose(1, 2)

    def initial_logits(self, b: int, length: int, like: Tensor) -> Tensor:
        shape = (b, self.num_interests, length)
        if self.routing_init == "zeros":
            return like.new_zeros(shape)
        return nn.init.trunc_normal_(like.new_empty(shape), std=1.0, a=-2.0, b=2.0)

    def forward(self, history: Tensor, mask: Tensor, logits: Optional[Tensor] = None,
                interest_mask: Optional[Tensor] = None) -> Tensor:
        """history [B, L, D], mask [B, L] bool → [B, K, D].

        logits: the initial routing logits [B, K, L] (default: ``routing_init``);
        interest_mask: [B, K] bool, False for interests a row does not use (MIND's dynamic
        interest number): they get no routing weight."""
        hat = self.project(history)                                                  # [B, K, L, D]
        routed = hat.detach() if self.stop_gradient else hat
        b, _, length, _ = hat.shape
        logits = self.initial_logits(b, length, hat) if logits is None else logits
        logits = logits.detach()
        valid = mask[:, None, :].to(hat.dtype)                                       # [B, 1, L]
        interests = hat.new_zeros(b, self.num_interests, self.dim)
        for step in range(self.iterations):
            scores = logits
            if interest_mask is not None:
                scores = scores.masked_fill(~interest_mask[:, :, None], float("-inf"))
            weights = torch.softmax(scores, dim=1) * valid                           # [B, K, L]
            last = step == self.iterations - 1
            source = hat if last else routed
            interests = squash(torch.einsum("bkl,bkld->bkd", weights, source))       # [B, K, D]
            if not last:
                logits = logits + torch.einsum("bkld,bkd->bkl", routed, interests)
        return interests
