"""TarFlow: transformer autoregressive flow (Zhai et al., arXiv 2412.06329).

The D flow coordinates are cut into T = D / token_size tokens (token_size=3:
one token per atom; 1: scalar tokens). Each block permutes the token order
(identity / reversed, alternating), runs a causal transformer with a learned
positional embedding and a zero-initialised output layer, and shifts its
outputs by one token, so token i's (alpha_i, mu_i) depend only on tokens < i
of the block's *conditioning* side; token 0 is unchanged. alpha is soft-clamped
to (-scale_bound, scale_bound).

Orientation (`parallel`):

* ``"sample"`` (default): prior -> data is the parallel pass,
  x_i = z_i * exp(alpha_i(z_<i)) + mu_i(z_<i) (inverse-autoregressive), so
  `forward`/`sample` are one pass per block (fast sampling, RegFlow regression);
  `inverse`/`log_prob` solve token by token.
* ``"density"`` (classic TarFlow): data -> prior is parallel,
  z_i = (x_i - mu_i(x_<i)) * exp(-alpha_i(x_<i)) (fast maximum likelihood);
  `forward`/`sample` are sequential.

The sequential direction decodes one token at a time with a key/value cache
(T - 1 steps per block); it is differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Flow, softclamp

_Cache = tuple[list[Tensor], list[Tensor]]


class _Attention(nn.Module):
    """Multi-head causal self-attention with an optional append-only key/value cache."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        if width % n_heads:
            raise ValueError(f"width {width} must be divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor, cache: _Cache | None = None) -> Tensor:
        """h [B, T, W] -> [B, T, W]. With `cache`, h holds the next token(s) only."""
        b, t, w = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.n_heads, w // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            cache[0].append(k)
            cache[1].append(v)
            y = F.scaled_dot_product_attention(q, torch.cat(cache[0], 2), torch.cat(cache[1], 2))
        return self.proj(y.transpose(1, 2).reshape(b, t, w))


class _Layer(nn.Module):
    """Pre-LayerNorm transformer layer: h + Attn(LN h); h + MLP(LN h) (GELU, no dropout)."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = _Attention(width, n_heads)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h: Tensor, cache: _Cache | None = None) -> Tensor:
        h = h + self.attn(self.ln1(h), cache)
        return h + self.mlp(self.ln2(h))


class _Block(nn.Module):
    """One autoregressive affine block in token order `reverse`d or not.

    With c the conditioning side and o the other side (both [B, T, token_size]):
    ``sign=-1`` ("density"): o = (c - mu) * exp(-alpha); ``sign=+1`` ("sample"):
    o = c * exp(alpha) + mu; alpha_i, mu_i are functions of c_<i.
    `parallel` maps c -> o in one pass; `sequential` maps o -> c token by token.
    """

    def __init__(self, n_tokens: int, token_size: int, width: int, n_layers: int, n_heads: int,
                 mlp_ratio: int, scale_bound: float, reverse: bool, sign: int) -> None:
        super().__init__()
        self.reverse, self.sign, self.scale_bound = reverse, sign, scale_bound
        self.inp = nn.Linear(token_size, width)
        self.pos = nn.Parameter(0.02 * torch.randn(n_tokens, width))
        self.layers = nn.ModuleList(_Layer(width, n_heads, mlp_ratio) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 2 * token_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _head(self, h: Tensor) -> tuple[Tensor, Tensor]:
        alpha, mu = self.out(self.norm(h)).chunk(2, dim=-1)
        return softclamp(alpha, self.scale_bound), mu

    def _perm(self, u: Tensor) -> Tensor:
        return u.flip(1) if self.reverse else u

    def _map(self, c: Tensor, alpha: Tensor, mu: Tensor) -> Tensor:
        """c -> o given (alpha, mu)."""
        return (c - mu) * (-alpha).exp() if self.sign < 0 else c * alpha.exp() + mu

    def _unmap(self, o: Tensor, alpha: Tensor, mu: Tensor) -> Tensor:
        """o -> c given (alpha, mu)."""
        return o * alpha.exp() + mu if self.sign < 0 else (o - mu) * (-alpha).exp()

    def parallel(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """c [B, T, S] -> (o [B, T, S], log|det do/dc| [B])."""
        cp = self._perm(c)
        h = self.inp(cp) + self.pos
        for layer in self.layers:
            h = layer(h)
        alpha, mu = self._head(h)
        alpha, mu = F.pad(alpha[:, :-1], (0, 0, 1, 0)), F.pad(mu[:, :-1], (0, 0, 1, 0))
        return self._perm(self._map(cp, alpha, mu)), self.sign * alpha.sum((1, 2))

    def sequential(self, o: Tensor) -> tuple[Tensor, Tensor]:
        """o [B, T, S] -> (c [B, T, S], log|det dc/do| [B]), T - 1 cached decoding steps."""
        op = self._perm(o)
        caches: list[_Cache] = [([], []) for _ in self.layers]
        cs = [op[:, 0]]
        alpha_sum = o.new_zeros(o.shape[0])
        for i in range(1, op.shape[1]):
            h = self.inp(cs[-1][:, None]) + self.pos[i - 1]
            for layer, cache in zip(self.layers, caches):
                h = layer(h, cache)
            alpha, mu = self._head(h[:, 0])
            cs.append(self._unmap(op[:, i], alpha, mu))
            alpha_sum = alpha_sum + alpha.sum(-1)
        return self._perm(torch.stack(cs, 1)), -self.sign * alpha_sum


class TarFlow(Flow):
    """Transformer autoregressive flow on R^D (see module docstring).

    Args: dim D (divisible by token_size); token_size (3: one token per atom);
    width (256), n_blocks (4), n_layers per block (2), n_heads (4), mlp_ratio (4);
    scale_bound: soft bound on alpha per token and block (3.0);
    parallel: "sample" (default) or "density" — which direction is the parallel pass.
    """

    arch = "tarflow"

    def __init__(
        self,
        dim: int,
        token_size: int = 3,
        width: int = 256,
        n_blocks: int = 4,
        n_layers: int = 2,
        n_heads: int = 4,
        mlp_ratio: int = 4,
        scale_bound: float = 3.0,
        parallel: str = "sample",
    ) -> None:
        if parallel not in ("sample", "density"):
            raise ValueError(f"parallel must be 'sample' or 'density', got {parallel!r}")
        if token_size < 1 or dim % token_size or dim // token_size < 2:
            raise ValueError(f"dim {dim} must be a multiple (>= 2 tokens) of token_size {token_size}")
        hp = dict(token_size=token_size, width=width, n_blocks=n_blocks, n_layers=n_layers, n_heads=n_heads,
                  mlp_ratio=mlp_ratio, scale_bound=scale_bound, parallel=parallel)
        super().__init__(dim, hp)
        self.token_size, self.parallel = token_size, parallel
        sign = 1 if parallel == "sample" else -1
        self.blocks = nn.ModuleList(
            _Block(dim // token_size, token_size, width, n_layers, n_heads, mlp_ratio, scale_bound, k % 2 == 1, sign)
            for k in range(n_blocks)
        )

    def _run(self, u: Tensor, parallel: bool) -> tuple[Tensor, Tensor]:
        h = u.reshape(u.shape[0], -1, self.token_size)
        logdet = u.new_zeros(u.shape[0])
        for block in (self.blocks if parallel else reversed(self.blocks)):
            h, ld = block.parallel(h) if parallel else block.sequential(h)
            logdet = logdet + ld
        return h.reshape(u.shape), logdet

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(z, parallel=self.parallel == "sample")

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(x, parallel=self.parallel == "density")
