"""MIND (Li, Liu, Wu, Xu, Zhao, Huang, Kang, Chen, Li, Lee, "Multi-Interest Network with
Dynamic Routing for Recommendation at Tmall", CIKM 2019), as reimplemented in
THUDM/ComiRec ``src/model.py`` (``Model_MIND``: the MIND numbers of the ComiRec paper).

::

    ê_l = S e_l                                  S ∈ R^{D×D} shared by positions and interests
    V   = B2I-routing(ê; β₀ ~ truncated N(0, 1) drawn at every call, 3 iterations)  [B, K, D]
    V   = ReLU(Dense(V))                         with relu_layer (ComiRec: Books only)
    training: u = Σ_k softmax_k(<v_k, e_t>^p) v_k   (label-aware attention, §4.4; p → ∞ is
              the hard argmax ComiRec's code uses, the default here)
    serving:  score(u, i) = max_k <v_k, E[i]>

The item table is shared by history and candidates (ComiRec's tied sampled softmax) and
the objective is the retrieval task's sampled softmax (§4.3 of models-b.md).

Deliberate departures:

* Defaults follow ComiRec's reimplementation (fixed K = 4, no user-profile tower, hard
  readout). The MIND paper's dynamic interest number K_u = max(1, min(K, log₂ n)) is the
  switch ``dynamic_interests`` (rounded down; the paper does not say): unused interests get
  no routing weight and are returned as copies of the first interest, so they change
  neither the max-over-interests score nor the readout. The paper's profile embeddings
  concatenated with each interest and its ReLU layers are not implemented (ComiRec omits
  them too); ``relu_layer`` is the code's one D → D ReLU layer.
* ``label_power`` p (MIND's pow(·, p)) must be a positive integer: a fractional power of a
  negative score is undefined. None = hard argmax.
* The shared bilinear map has no bias (the code passes ``bias_initializer=None``).
* The routing logits are random at evaluation too (as the code): two evaluations of one
  user differ slightly.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from recsys.contract import Batch

from .base import FeatureSpec, RetrievalOutput
from .comirec import _TiedItemModel
from .layers.capsule import B2IRouting
from .registry import register


@register
class MIND(_TiedItemModel):
    """Shared-bilinear dynamic routing with label-aware attention (see module docstring).

    Args:
        features: the run's feature spec.
        embedding_dim: D (64 in ComiRec's code).
        num_interests: K (4).
        iterations: routing iterations (3).
        relu_layer: one ReLU Dense D → D after the capsules (ComiRec: True on Books).
        dynamic_interests: MIND's K_u = max(1, min(K, ⌊log₂ n⌋)).
        label_power: p of the label-aware attention; None = hard argmax (ComiRec's code).
        stop_gradient: route on a gradient-free ê in the intermediate iterations (True).
        item_fields: item side fields summed into the item vectors (default none).
        item_init: init of the item table (``xavier_uniform``).
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 64, num_interests: int = 4,
                 iterations: int = 3, relu_layer: bool = False, dynamic_interests: bool = False,
                 label_power: Optional[int] = None, stop_gradient: bool = True,
                 item_fields: Optional[List[str]] = None, item_init: str = "xavier_uniform") -> None:
        super().__init__(features, embedding_dim, item_fields, item_init)
        if label_power is not None and (isinstance(label_power, bool) or int(label_power) != label_power
                                        or label_power < 1):
            raise ValueError(f"label_power must be a positive integer or None (hard readout), got {label_power!r}")
        self.num_interests = num_interests
        self.label_power = label_power
        self.dynamic_interests = dynamic_interests
        self.routing = B2IRouting(embedding_dim, features.max_length, num_interests, bilinear="shared",
                                  iterations=iterations, routing_init="normal", stop_gradient=stop_gradient)
        self.projection = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.ReLU()) if relu_layer else None

    def interest_mask(self, lengths: Tensor) -> Optional[Tensor]:
        """[B, K] bool: the first K_u interests of each row (None: all K)."""
        if not self.dynamic_interests:
            return None
        used = torch.floor(torch.log2(lengths.clamp_min(1).to(torch.float32))).long().clamp(1, self.num_interests)
        return torch.arange(self.num_interests, device=lengths.device)[None, :] < used[:, None]

    def user_interests(self, batch: Batch) -> RetrievalOutput:
        """[B, K, D] from the history only."""
        history, mask = self.history(batch)
        used = self.interest_mask(batch.lengths)
        interests = self.routing(history, mask, interest_mask=used)
        if self.projection is not None:
            interests = self.projection(interests)
        if used is not None:   # unused slots repeat interest 0: max-over-k and argmax unchanged
            interests = torch.where(used[:, :, None], interests, interests[:, :1])
        return RetrievalOutput(interests)

    def select_interest(self, interests: Tensor, target: Tensor) -> Tensor:
        """Label-aware attention: [B, K, D], target [B, D] → [B, D]."""
        if self.label_power is None:
            return super().select_interest(interests, target)
        scores = torch.einsum("bkd,bd->bk", interests, target).pow(int(self.label_power))
        return torch.einsum("bk,bkd->bd", torch.softmax(scores, dim=1), interests)

