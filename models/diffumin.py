"""DiffuMIN: Diffusion-driven Multi-Interest Network.

Lai et al., "Diffusion-driven Multi-Interest Network for CTR prediction" (DiffuMIN),
RecSys 2025 (arXiv:2508.15311). Official TF1 code: github.com/laiweijiang/DiffuMIN
(``handle_layer/handle_lib/handle_rec_unit.py``: ``Eleme_DiffuMIN``, ``Mix5k_DiffuMIN``,
``Diffusion_Net``; defaults from ``exp/user1/*/task_conf.json``). Written from the paper's
method and the code's facts and numbers; design notes: ../shared/design/models-a.md §3.

What it computes (B batch, L history, D behaviour width, C channels):
    e_s = e(target) [B, D], H = e(history) [B, L, D] (the shared BehaviorEmbedding)
    OMIE   P = reshape(Linear(e_s) → D·C) [B, D, C]; O = thin QR(P), sign-fixed [B, D, C]
           A = H·O [B, L, C]; M = M1 (route each behaviour to its argmax channel)
                                ⊙ M2 (per channel keep the top-k / top-p behaviours)
           r_c = (1/L_b) Σ_l M_lc A_lc h_l → R [B, C, D]; R̂ = norm(R), Ô = norm(Oᵀ)
    DMIG   linear β 1e-4 → 0.02 over T = 1000 steps; denoiser = step embedding + 2 post-LN
           blocks (self-attention over the C interest tokens, attention to the channel token
           ô_i, FFN 3D) that predicts x_0.
           training, per channel i: t ~ U{0..T−1}, x_t = q(x_t | r̂_i); tokens = R̂ with token i
           replaced by x_t; L_d = mean_i MSE(r̂_i, out_i)
           sampling (training and inference): x = r̂_i noised to step T′ (0-indexed T′−1), then
           T′ reverse steps x_{n−1} ~ q(x_{n−1} | x_n, x̂_0 = out_i), n = T′−1..0 → R* [B, C, D]
    CMIC   z = norm(MLP1(r̂_c)), z* = norm(MLP2(r*_c)) (D → 4D ReLU → D); per channel in-batch
           InfoNCE with τ = 0.05: L_cl = mean_{c,b} [logsumexp_j z_b·z*_j/τ − z_b·z*_b/τ]
    short  tokens [h_{L_b−k+1}..h_{L_b} (the k most recent), e_s] → 2 blocks of the same form
           (attention to ô_C) → e*_s, the output at the target token
    head   [e_other, flat(R), flat(R*), e*_s, e_s] → MLP 1024-512-256 (Linear → BN → Dice) → 1
    loss   BCE + λ1·L_d + λ2·L_cl, λ1 = 0.01, λ2 = 0.001 (``get_auxiliary_loss``)

The auxiliary losses come back in ``RankingOutput.aux_losses`` as ``"diffusion"`` = λ1·L_d and
``"contrastive"`` = λ2·L_cl, already weighted by ``diffusion_weight`` / ``contrastive_weight``
(the paper's λ), so the task's default ``aux_loss_weights`` (1.0) trains the paper's loss.
They are computed in training only.

Switches (each one config line; the paper's ablations and where the sources differ):
    use_dmig=False        "w/o DMIG": no denoiser, no R* (and hence no CMIC), no L_d
    use_cmic=False        "w/o CMIC": no projection MLPs, no L_cl
    channels="random"     random instead of orthogonal channels: C fixed random unit directions
                          (drawn once at construction, a saved buffer), target-independent;
                          "projection" keeps the target-conditioned columns of P, normalised,
                          without orthogonalising them
    routing="soft"        soft routing (softmax over channels) instead of top-1
    filter="top_p"        the paper's top-p share per channel instead of the code's top-k (100)
    sample_start="random" the code's start: noise r̂_i to a random t in [0, T) (then T′ steps;
                          the start is random at inference too, so scores are not reproducible)
    eval_sampling="stochastic"  the code's noisy chain at inference too

Departures from the official code (deliberate; see models-a §3 "Pitfalls"):
    * The auxiliary losses are added to the training loss (the released ``model_fn`` never adds
      ``get_auxiliary_loss``).
    * x_0-prediction everywhere: the code trains the output as x_0 but samples as if it were ε
      (x̂_0 = √(1/ᾱ)x − √(1/ᾱ − 1)ε̂); here the sampler uses the output as x̂_0 directly.
    * Sampling starts from r̂_i noised to step T′ and runs T′ reverse steps (the code noises to a
      random t < T but runs only n = T′−1..0; ``sample_start="random"`` keeps that). T′ > T is a
      config-time error.
    * Inference is deterministic by default (``eval_sampling="mean"``): the chain starts at the
      mean √ᾱ_{T′−1}·r̂_i and takes posterior means (no noise), so scores are reproducible; the
      code draws noise at inference too. Training always samples noise.
    * QR column signs are fixed (non-negative diagonal of R): the code's are whatever LAPACK
      returns, which can flip the argmax routing. The code's N(0, 1e-8²) jitter on P is kept,
      in training only (it guards the QR gradient against rank deficiency).
    * The top-k filter keeps all valid behaviours of a row with fewer than k (the code's
      ``top_k(100)`` crashes for L = 50); padding is never routed, kept or averaged: R divides
      by the row's valid length L_b, not by the padded L (the code's mean over all L).
    * Self-attention scores are scaled by 1/√(D/heads); the code divides by √(number of keys)
      (``tf.shape(k)[-1]`` after the transpose). The attention to the single channel token is
      computed as the linear map it is (W_o W_v ô, weight 1); its Q/K would get no gradient.
    * The short-term branch has its own blocks (the code reuses the diffusion blocks' attention
      under another variable scope but shares their LayerNorm objects), takes the k most
      recent behaviours (our histories are most-recent-last; the code slices the first k of its
      most-recent-first lists), masks the padding of users with fewer than k, and attends to the
      last channel token ô_C as the code's leftover loop variable does. ``short_term_length``
      (subseq_len) is in no config; 10 is ours. The target token is e_s (width D); the code
      concatenates the D·C-wide projection there, which does not fit.
    * e_s is the target's behaviour embedding, the same function as the history's (the Ele.me
      code projects the flattened item fields with a Dense; with equal widths that projection
      is not needed). e_other = the user-profile and context fields of the open feature
      contract (``batch.profile`` / ``batch.context``, FeatureEmbedding, ``field_dim`` wide;
      number fields standardised, FuxiCTR-style, instead of the code's BN over dense features);
      the user id itself is not embedded (as in DIN here).
    * Head: the code's final BatchNorm on the logit and the sample-rate recalibration of eval
      scores are not reproduced (neither changes AUC); the head's BN → Dice order is the code's.
    * The C per-channel denoiser passes run as one batched pass of C·B rows (the same
      arithmetic, fewer calls): C·(1 + T′) denoiser evaluations per training batch, C·T′ at
      inference. Gradients flow through every sampling step (R* feeds the head), as in the code.
    * Embeddings start from N(0, 0.01²) (``embedding_init_std``; the official framework's
      initialiser is not released), dense layers keep PyTorch's defaults.
    * Empty channels and empty histories give r_c = 0 and r̂_c = 0 (normalising a zero vector
      gives zero); the model still scores such rows from e_s, e*_s and e_other.
    * Long histories: the L-dependent work is two [B, L, C]-by-[B, L, D] products and a top-k
      over L per channel, which need no [B, L, D]-sized temporaries beyond H itself. The
      kernels' attention-pooling op does not apply: its weights are softmax or relu of one
      query's scores, while OMIE's are signed scores times routing/filter masks for C queries.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.contract import Batch
from recsys.errors import ConfigError

from .base import FeatureSpec, RankingModel, RankingOutput
from .inputs import embed_fields, profile_embedding, user_and_context_fields
from .layers.embedding import BehaviorEmbedding
from .layers.interest_diffusion import InterestBlock, InterestDenoiser, LinearBetaSchedule, in_batch_contrastive
from .layers.mlp import MLP
from .layers.orthogonal_interests import (FILTERS, ROUTINGS, aggregate_interests, filter_mask, orthogonal_channels,
                                          routing_mask)
from .registry import register

CHANNEL_MODES = ("qr", "random", "projection")
SAMPLE_STARTS = ("t_prime", "random")
EVAL_SAMPLINGS = ("mean", "stochastic")


def _projection_head(dim: int) -> nn.Module:
    """CMIC's projection MLP: D → 4D ReLU → D (official ``ProjectHeads``)."""
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))


@register
class DiffuMIN(RankingModel):
    """Diffusion-driven Multi-Interest Network (see the module docstring).

    Args:
        features: the run's fields; item side fields extend e(i), profile/context fields are e_other.
        item_dim, category_dim: embedding widths (8 each: the config's embed_dim 8 per field).
        field_dim: width of each side field (None = category_dim); ids_pooling "mean" | "sum".
        num_channels: C (channel_num 4).
        channels: "qr" (OMIE) | "random" | "projection" (ablations).
        routing: "top1" (paper, code) | "soft".
        filter, top_k, top_p: "topk" with k = 100 (code) | "top_p" with share p (paper; no value
            is published, 0.5 is ours).
        use_dmig, timesteps, sample_steps, beta_start, beta_end: DMIG and its schedule
            (T = 1000, T′ = infer_timesteps = 10, linear β 1e-4 → 0.02).
        sample_start: "t_prime" (paper's intent) | "random" (code).
        eval_sampling: "mean" (deterministic scores) | "stochastic" (code).
        num_layers, num_heads, ffn_factor: denoiser and short-term blocks (2, 2, 3).
        use_cmic, temperature: CMIC and τ (0.05).
        diffusion_weight, contrastive_weight: λ1 = 0.01, λ2 = 0.001.
        use_short_term, short_term_length: the short-term branch and its k (10, ours).
        mlp_units, mlp_activation, batch_norm, dropout: the prediction MLP ([1024, 512, 256], Dice, BN).
        embedding_init_std: N(0, std²) init of the embedding tables.
        qr_jitter: std of the noise added to P before the QR, in training (code: 1e-8).
    """

    def __init__(self, features: FeatureSpec, *, item_dim: int = 8, category_dim: int = 8,
                 field_dim: Optional[int] = None, ids_pooling: str = "mean", num_channels: int = 4,
                 channels: str = "qr", routing: str = "top1", filter: str = "topk", top_k: int = 100,
                 top_p: float = 0.5, use_dmig: bool = True, timesteps: int = 1000, sample_steps: int = 10,
                 beta_start: float = 1e-4, beta_end: float = 0.02, sample_start: str = "t_prime",
                 eval_sampling: str = "mean", num_layers: int = 2, num_heads: int = 2, ffn_factor: int = 3,
                 use_cmic: bool = True, temperature: float = 0.05, diffusion_weight: float = 0.01,
                 contrastive_weight: float = 0.001, use_short_term: bool = True, short_term_length: int = 10,
                 mlp_units: List[int] = [1024, 512, 256], mlp_activation: str = "dice", batch_norm: bool = True,
                 dropout: float = 0.0, embedding_init_std: float = 0.01, qr_jitter: float = 1e-8) -> None:
        super().__init__(features)
        self.embedding = BehaviorEmbedding(features, item_dim, category_dim, embedding_init_std,
                                           field_dim=field_dim, pooling=ids_pooling)
        dim = self.embedding.dim
        self._check(dim, num_channels, channels, routing, filter, top_k, top_p, timesteps, sample_steps,
                    sample_start, eval_sampling, num_layers, num_heads, ffn_factor, temperature,
                    short_term_length, use_short_term)
        self.dim, self.num_channels = dim, num_channels
        self.channel_mode, self.routing, self.filter = channels, routing, filter
        self.top_k, self.top_p, self.qr_jitter = top_k, top_p, qr_jitter
        self.sample_steps, self.sample_start, self.eval_sampling = sample_steps, sample_start, eval_sampling
        self.temperature = temperature
        self.diffusion_weight, self.contrastive_weight = diffusion_weight, contrastive_weight
        self.short_term_length = short_term_length

        if channels == "random":
            directions = torch.randn(dim, num_channels, generator=torch.Generator().manual_seed(0))
            self.register_buffer("random_channels", F.normalize(directions, dim=0), persistent=True)
            self.channel_projection = None
        else:
            self.channel_projection = nn.Linear(dim, dim * num_channels)
        self.use_dmig = use_dmig
        self.use_cmic = use_cmic and use_dmig     # CMIC calibrates R* against R̂: nothing to do without DMIG
        if use_dmig:
            self.schedule = LinearBetaSchedule(timesteps, beta_start, beta_end)
            self.denoiser = InterestDenoiser(dim, num_layers, num_heads, ffn_factor)
        if self.use_cmic:
            self.project_real = _projection_head(dim)
            self.project_generated = _projection_head(dim)
        self.use_short_term = use_short_term
        if use_short_term:
            self.short_term = nn.ModuleList(InterestBlock(dim, num_heads, ffn_factor) for _ in range(num_layers))

        self.field_names = user_and_context_fields(features)
        self.fields = profile_embedding(features, self.field_names, self.embedding,
                                        category_dim if field_dim is None else field_dim, embedding_init_std,
                                        ids_pooling)
        other = sum(self.fields.width(n) for n in self.field_names) if self.fields is not None else 0
        in_dim = other + num_channels * dim * (2 if use_dmig else 1) + dim * (2 if use_short_term else 1)
        self.mlp = MLP(in_dim, mlp_units, mlp_activation, dropout, batch_norm, output_dim=1)

    @staticmethod
    def _check(dim, num_channels, channels, routing, filter, top_k, top_p, timesteps, sample_steps, sample_start,
               eval_sampling, num_layers, num_heads, ffn_factor, temperature, short_term_length,
               use_short_term) -> None:
        """Config-time errors (ConfigError naming the argument)."""
        choices = (("channels", channels, CHANNEL_MODES), ("routing", routing, ROUTINGS), ("filter", filter, FILTERS),
                   ("sample_start", sample_start, SAMPLE_STARTS), ("eval_sampling", eval_sampling, EVAL_SAMPLINGS))
        for name, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"DiffuMIN: {name} must be one of {allowed}, got {value!r}")
        if num_channels < 1:
            raise ConfigError(f"DiffuMIN: num_channels must be >= 1, got {num_channels}")
        if channels == "qr" and num_channels > dim:
            raise ConfigError(f"DiffuMIN: {num_channels} orthogonal channels need a behaviour width D >= C, "
                              f"got D = {dim}; widen item_dim/category_dim or lower num_channels")
        if top_k < 1:
            raise ConfigError(f"DiffuMIN: top_k must be >= 1, got {top_k}")
        if not 0 < top_p <= 1:
            raise ConfigError(f"DiffuMIN: top_p must be in (0, 1], got {top_p}")
        if timesteps < 1 or sample_steps < 1:
            raise ConfigError(f"DiffuMIN: timesteps and sample_steps must be >= 1, got {timesteps}, {sample_steps}")
        if sample_steps > timesteps:
            raise ConfigError(f"DiffuMIN: sample_steps T' = {sample_steps} exceeds the schedule's T = {timesteps}; "
                              "the chain starts at step T' of the T-step schedule")
        if dim < 4:
            raise ConfigError(f"DiffuMIN: the behaviour width D = {dim} must be >= 4 (step embedding)")
        if num_layers < 1 or num_heads < 1 or ffn_factor < 1:
            raise ConfigError("DiffuMIN: num_layers, num_heads and ffn_factor must be >= 1")
        if dim % num_heads:
            raise ConfigError(f"DiffuMIN: the behaviour width D = {dim} is not divisible by num_heads = {num_heads}")
        if not temperature > 0:
            raise ConfigError(f"DiffuMIN: temperature must be > 0, got {temperature}")
        if use_short_term and short_term_length < 1:
            raise ConfigError(f"DiffuMIN: short_term_length must be >= 1, got {short_term_length}")

    # ------------------------------------------------------------------ OMIE
    def channel_basis(self, target: Tensor) -> Tensor:
        """O [B, D, C] from e_s [B, D]."""
        if self.channel_mode == "random":
            return self.random_channels.unsqueeze(0).expand(target.shape[0], -1, -1)
        projection = self.channel_projection(target).view(-1, self.dim, self.num_channels)
        if self.channel_mode == "projection":
            return F.normalize(projection, dim=1)
        if self.training and self.qr_jitter > 0:
            projection = projection + self.qr_jitter * torch.randn_like(projection)
        return orthogonal_channels(projection)

    def interests(self, history: Tensor, valid: Tensor, lengths: Tensor, basis: Tensor) -> Dict[str, Tensor]:
        """OMIE: relevance A [B, L, C], mask M [B, L, C], R [B, C, D]."""
        relevance = torch.einsum("bld,bdc->blc", history, basis)
        mask = routing_mask(relevance, valid, self.routing) * \
            filter_mask(relevance, valid, self.filter, self.top_k, self.top_p)
        return {"relevance": relevance, "mask": mask,
                "R": aggregate_interests(history, mask * relevance, lengths)}

    # ------------------------------------------------------------------ DMIG
    def _tokens(self, real: Tensor, replacement: Tensor) -> Tensor:
        """[C·B, C, D]: for channel i (rows i·B..), R̂ with token i replaced by replacement[i]."""
        c, b, d = replacement.shape
        eye = torch.eye(c, device=real.device, dtype=real.dtype).view(c, 1, c, 1)
        tokens = real.unsqueeze(0) * (1 - eye) + replacement.unsqueeze(2) * eye     # [C, B, C, D]
        return tokens.reshape(c * b, c, d)

    def _denoise(self, real: Tensor, noisy: Tensor, condition: Tensor, steps: Tensor) -> Tensor:
        """x̂_0 of every channel: real R̂ [B, C, D], noisy [C, B, D], condition [C, B, D], steps [C, B]."""
        c, b, d = noisy.shape
        out = self.denoiser(self._tokens(real, noisy), condition.reshape(c * b, d), steps.reshape(c * b))
        out = out.view(c, b, c, d)
        index = torch.arange(c, device=out.device)
        return out[index, :, index]                                                 # [C, B, D]

    def diffusion_loss(self, real: Tensor, condition: Tensor) -> Tensor:
        """L_d = mean_i MSE(r̂_i, x̂_0,i) at t ~ U{0..T−1} per (channel, row)."""
        x0 = real.transpose(0, 1)                                                   # [C, B, D]
        steps = torch.randint(0, self.schedule.timesteps, x0.shape[:2], device=x0.device)
        noisy = self.schedule.q_sample(x0, steps, torch.randn_like(x0))
        return F.mse_loss(self._denoise(real, noisy, condition, steps), x0)

    def generate(self, real: Tensor, condition: Tensor) -> Tensor:
        """R* [B, C, D]: T′ reverse steps from the noised real interests (x_0-prediction)."""
        x0 = real.transpose(0, 1)
        stochastic = self.training or self.eval_sampling == "stochastic"
        if self.sample_start == "random":
            start = torch.randint(0, self.schedule.timesteps, x0.shape[:2], device=x0.device)
        else:
            start = torch.full(x0.shape[:2], self.sample_steps - 1, device=x0.device, dtype=torch.long)
        x = self.schedule.q_sample(x0, start, torch.randn_like(x0) if stochastic else torch.zeros_like(x0))
        for n in reversed(range(self.sample_steps)):
            steps = torch.full(x0.shape[:2], n, device=x0.device, dtype=torch.long)
            mean, variance = self.schedule.q_posterior(self._denoise(real, x, condition, steps), x, steps)
            x = mean + variance.sqrt() * torch.randn_like(x) if stochastic and n > 0 else mean
        return x.transpose(0, 1)

    # ------------------------------------------------------------------ short-term branch
    def short_term_interest(self, history: Tensor, lengths: Tensor, target: Tensor, condition: Tensor) -> Tensor:
        """e*_s [B, D]: the k most recent behaviours and the target token through the blocks."""
        k = self.short_term_length
        positions = lengths.unsqueeze(1) - k + torch.arange(k, device=lengths.device)   # [B, k], oldest first
        present = positions >= 0
        index = positions.clamp(min=0, max=max(history.shape[1] - 1, 0))
        recent = history.gather(1, index.unsqueeze(-1).expand(-1, -1, self.dim)) if history.shape[1] else \
            history.new_zeros(history.shape[0], k, self.dim)
        tokens = torch.cat([recent * present.unsqueeze(-1), target.unsqueeze(1)], dim=1)
        valid = torch.cat([present, present.new_ones(present.shape[0], 1)], dim=1)
        for block in self.short_term:
            tokens = block(tokens, condition, valid)
        return tokens[:, -1]

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> RankingOutput:
        batch = batch.to_padded()
        target = self.embedding(batch.target_item, batch.target_category, self.item_side)        # [B, D]
        history = self.embedding(batch.hist_item, batch.hist_category, self.item_side)          # [B, L, D]
        valid = batch.history_mask()
        history = history * valid.unsqueeze(-1).to(history.dtype)
        basis = self.channel_basis(target)
        omie = self.interests(history, valid, batch.lengths, basis)
        real = F.normalize(omie["R"], dim=-1)                                                   # R̂ [B, C, D]
        tokens = F.normalize(basis.transpose(1, 2), dim=-1)                                    # Ô [B, C, D]
        parts = embed_fields(self.fields, batch, self.features, self.field_names) if self.fields is not None else []
        parts.append(omie["R"].flatten(1))
        aux: Dict[str, Tensor] = {}
        if self.use_dmig:
            condition = tokens.transpose(0, 1)                                                 # [C, B, D]
            if self.training:
                aux["diffusion"] = self.diffusion_weight * self.diffusion_loss(real, condition)
            generated = self.generate(real, condition)                                         # R* [B, C, D]
            parts.append(generated.flatten(1))
            if self.use_cmic and self.training:
                aux["contrastive"] = self.contrastive_weight * in_batch_contrastive(
                    self.project_real(real.transpose(0, 1)), self.project_generated(generated.transpose(0, 1)),
                    self.temperature)
        if self.use_short_term:
            parts.append(self.short_term_interest(history, batch.lengths, target, tokens[:, -1]))
        parts.append(target)
        return RankingOutput(logit=self.mlp(torch.cat(parts, dim=-1)).squeeze(-1), aux_losses=aux)

    def set_id_frequencies(self, item_counts: Tensor, category_counts: Tensor) -> None:
        self.embedding.set_frequencies(item_counts, category_counts)
