"""DiffuMIN's diffusion pieces (``models/diffumin.py``): the DDPM schedule with its forward
and posterior formulas, the step embedding, and the post-LN interest block used both by the
denoiser (DMIG) and by the short-term branch.

Notation: N = rows (batch × channels when the channels are batched), S = tokens, D = width.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearBetaSchedule(nn.Module):
    """DDPM with β_t linear from ``beta_start`` to ``beta_end`` over t = 0..T−1 (0-indexed as
    the official code), ᾱ_t = Π_{s≤t}(1 − β_s), ᾱ_{−1} = 1.

    forward   q(x_t | x_0)          = N(√ᾱ_t · x_0, (1 − ᾱ_t) I)
    posterior q(x_{t−1} | x_t, x_0) = N(c1_t · x_0 + c2_t · x_t, σ²_t I) with
              c1_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t), c2_t = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t),
              σ²_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    (the tables are float64-computed buffers, not saved: they follow from the arguments).
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.timesteps = timesteps
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        cumprod = torch.cumprod(alphas, 0)
        prev = torch.cat([cumprod.new_ones(1), cumprod[:-1]])
        tables = {
            "betas": betas,
            "alphas_cumprod": cumprod,
            "sqrt_alphas_cumprod": cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - cumprod).sqrt(),
            "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - cumprod),
            "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - cumprod),
            "posterior_variance": betas * (1.0 - prev) / (1.0 - cumprod),
        }
        for name, table in tables.items():
            self.register_buffer(name, table.float(), persistent=False)

    @staticmethod
    def _at(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """table[t] shaped to broadcast over ``like`` ([N] → [N, 1, ...])."""
        return table[t].reshape(t.shape + (1,) * (like.dim() - t.dim())).to(like.dtype)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε; x0, noise [N, ..., D], t [N] int."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """(mean, variance) of q(x_{t−1} | x_t, x_0); variance broadcastable [N, 1, ...]."""
        mean = self._at(self.posterior_mean_coef1, t, xt) * x0 + self._at(self.posterior_mean_coef2, t, xt) * xt
        return mean, self._at(self.posterior_variance, t, xt)


def sinusoidal_embedding(steps: Tensor, dim: int) -> Tensor:
    """[N] int steps → [N, 2·(dim // 2)]: [sin(t·f_k) ‖ cos(t·f_k)], f_k = 10000^(−k/(half − 1))
    (the official code's step_mlp input; half = dim // 2 >= 2)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=steps.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = steps.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class StepEmbedding(nn.Module):
    """Diffusion step → [N, D]: sinusoidal(D) → Linear(4D) → swish → Linear(D) (official step_mlp)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(2 * (dim // 2), 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, steps: Tensor) -> Tensor:
        return self.net(sinusoidal_embedding(steps, self.dim))


class SelfAttention(nn.Module):
    """Multi-head self-attention with bias-free Q/K/V/O projections (official
    ``MultiHeadSelfAttention``), scores scaled by 1/√(D/heads). [N, S, D] → [N, S, D];
    ``key_valid`` [N, S] bool masks keys (each row needs one valid key)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: Tensor, key_valid: Optional[Tensor] = None) -> Tensor:
        n, s, d = x.shape
        split = lambda y: y.reshape(n, s, self.heads, d // self.heads).transpose(1, 2)   # noqa: E731
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(n, s, d))


class InterestBlock(nn.Module):
    """One post-LN block (official ``Diffusion_Net``): self-attention over the tokens → Add&LN,
    attention from every token to the single condition token c → Add&LN, FFN D → fD ReLU → D
    → Add&LN (LayerNorm ε = 1e-6).

    Attention to one key has softmax weight 1, so that step is exactly W_o W_v c added to each
    token; it is computed so (its Q/K projections would get no gradient and are not built).
    """

    def __init__(self, dim: int, heads: int, ffn_factor: int) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.cross_v = nn.Linear(dim, dim, bias=False)
        self.cross_o = nn.Linear(dim, dim, bias=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_factor * dim), nn.ReLU(), nn.Linear(ffn_factor * dim, dim))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))

    def forward(self, x: Tensor, condition: Tensor, key_valid: Optional[Tensor] = None) -> Tensor:
        """x [N, S, D], condition [N, D] → [N, S, D]."""
        x = self.norm1(x + self.attention(x, key_valid))
        x = self.norm2(x + self.cross_o(self.cross_v(condition)).unsqueeze(1))
        return self.norm3(x + self.ffn(x))


class InterestDenoiser(nn.Module):
    """DMIG's denoiser: tokens [N, C, D] + step embedding of t (added to every token) →
    ``layers`` InterestBlocks conditioned on the channel token → [N, C, D]; the caller reads
    the noised channel's output as its x̂_0."""

    def __init__(self, dim: int, layers: int, heads: int, ffn_factor: int) -> None:
        super().__init__()
        self.step = StepEmbedding(dim)
        self.blocks = nn.ModuleList(InterestBlock(dim, heads, ffn_factor) for _ in range(layers))

    def forward(self, tokens: Tensor, condition: Tensor, steps: Tensor) -> Tensor:
        x = tokens + self.step(steps).unsqueeze(1)
        for block in self.blocks:
            x = block(x, condition)
        return x


def in_batch_contrastive(real: Tensor, generated: Tensor, temperature: float) -> Tensor:
    """CMIC's loss: real, generated [C, B, D] (already projected) → scalar
    mean_{c,b} [logsumexp_j S_cbj − S_cbb], S_c = norm(real_c) · norm(generated_c)ᵀ / τ
    (row b's positive is its own generated interest; the other rows' are negatives)."""
    z, z_star = F.normalize(real, dim=-1), F.normalize(generated, dim=-1)
    scores = torch.matmul(z, z_star.transpose(1, 2)) / temperature          # [C, B, B]
    return (torch.logsumexp(scores, dim=-1) - scores.diagonal(dim1=1, dim2=2)).mean()
