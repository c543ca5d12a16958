"""ComiRec-SA's multi-head self-attentive interest extractor (Cen et al., KDD 2020, §3.3).

As ``Model_ComiRec_SA`` in THUDM/ComiRec ``src/model.py`` (after Lin et al.'s structured
self-attentive sentence embedding)::

    H = E + P                                   [B, L, D]   (learned positions, in the score only)
    A = softmax_L( W₂ tanh(W₁ Hᵀ + b₁) + b₂ )    [B, K, L]   (W₁: 4·D × D, W₂: K × 4·D; padded
                                                              positions excluded)
    V = A · E                                    [B, K, D]   (the raw embeddings are aggregated)

The code's dense layers carry biases (``tf.layers.dense`` defaults). Padded scores are
filled with −2³² + 1 as in the code; a row without any behaviour gets all-zero weights
(its interests are zero vectors: the code averages zero embeddings, the same result).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SelfAttentiveExtractor(nn.Module):
    """history [B, L, D] (padded entries zeroed), mask [B, L] → interests [B, K, D].

    Args:
        dim: D.
        max_length: rows of the positional table (positions 0 .. L−1, oldest first).
        num_interests: K (the attention heads).
        hidden_factor: width of the tanh layer in units of D (4 in the code).
        positional: add the positional table to the input of the score (``add_pos``).
    """

    def __init__(self, dim: int, max_length: int, num_interests: int, hidden_factor: int = 4,
                 positional: bool = True) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, hidden_factor * dim)
        self.heads = nn.Linear(hidden_factor * dim, num_interests)
        for layer in (self.hidden, self.heads):      # TF dense: Glorot-uniform kernel, zero bias
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.position = None
        if positional:
            self.position = nn.Parameter(torch.empty(max_length, dim))
            nn.init.xavier_uniform_(self.position)   # get_variable's default initialiser

    def attention(self, history: Tensor, mask: Tensor) -> Tensor:
        """A: [B, K, L], rows summing to 1 over the valid positions (0 where none)."""
        scored = history
        if self.position is not None:
            length = history.shape[1]
            if length > self.position.shape[0]:
                raise ValueError(f"a history of {length} positions exceeds max_length {self.position.shape[0]}")
            scored = history + self.position[:length]
        logits = self.heads(torch.tanh(self.hidden(scored))).transpose(1, 2)          # [B, K, L]
        # finite fill (the code's −2³² + 1): exp underflows to exactly 0 beside any valid
        # position; a row without behaviours gets uniform weights, zeroed by the mask
        logits = logits.masked_fill(~mask[:, None, :], -2.0 ** 32 + 1)
        return torch.softmax(logits, dim=-1) * mask[:, None, :].to(logits.dtype)

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        return torch.einsum("bkl,bld->bkd", self.attention(history, mask), history)
