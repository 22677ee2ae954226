r"""Causal multi-head self-attention, transformer blocks and a key/value cache (Book §3.3.2, 11.2.4).

Self-attention (Eq. 3.17-3.19), per head h with width d_h = D / H:

    Q = X W_q,  K = X W_k,  V = X W_v,    Y_h = softmax(Q Kᵀ / √d_h + M) V,

where the causal mask M is -∞ above the diagonal, so position t attends to positions <= t
only; the heads are concatenated and mixed by W_o. A block adds an MLP (Linear -> GELU ->
Linear, width ``mlp_ratio`` D) with residual connections and LayerNorm, either after each
residual sum as in the book (post-LN, Eq. 3.20-3.23) or before each sublayer (pre-LN, GPT-2),
which trains deeper stacks more stably.

The key/value cache: when tokens arrive one at a time (sampling), the keys and values of the
earlier positions do not change, so each layer stores them and a new token costs one row of
attention, O(t), instead of a pass over the whole prefix, O(t²) per layer. The book's sampler
recomputes the prefix at every step (Book §11.2.4, pitfall 8).

(The book's listing scales by the full width D and gives every head width D; here heads split D,
as in Vaswani et al. 2017, and the scale is 1/√d_h.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError

__all__ = ["KVCache", "CausalSelfAttention", "TransformerBlock"]


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated.

    ``keys`` and ``values`` have shape (layers, N, H, max_length, d_h); positions
    ``0 .. length - 1`` are filled. A forward pass over t new tokens writes positions
    ``length .. length + t - 1`` in every layer, then :meth:`advance` moves ``length`` on.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (num_layers, batch, num_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the t new keys/values (N, H, t, d_h) of ``layer``; return all of them so far."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ConfigError(f"KV cache holds {self.max_length} positions; asked for {end}")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, t: int) -> None:
        self.length += t


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask; optionally reads and fills a KV cache."""

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % num_heads:
            raise ConfigError(f"num_heads ({num_heads}) must divide the width ({width})")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, h: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """h (N, t, D) -> (N, t, D). With a cache, h holds the positions after ``cache.length``."""
        n, t, width = h.shape
        q, k, v = self.qkv(h).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            start = cache.length
            k, v = cache.append(layer, k, v)
            if t == 1:  # a single new token may see every cached position
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            else:  # new token i (at start + i) sees positions <= start + i
                rows = torch.arange(start, start + t, device=h.device).unsqueeze(1)
                mask = rows >= torch.arange(start + t, device=h.device).unsqueeze(0)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(n, t, width))


class TransformerBlock(nn.Module):
    """Attention and MLP sublayers with residual sums and LayerNorm (pre- or post-LN)."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        norm: Literal["pre", "post"] = "pre",
    ) -> None:
        super().__init__()
        if norm not in ("pre", "post"):
            raise ConfigError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.norm = norm
        self.ln1 = nn.LayerNorm(width)
        self.ln2 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, num_heads, dropout)
        self.fc_in = nn.Linear(width, mlp_ratio * width)
        self.fc_out = nn.Linear(mlp_ratio * width, width)
        self.drop = nn.Dropout(dropout)

    def mlp(self, h: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc_in(h)))

    def forward(self, h: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        if self.norm == "pre":
            h = h + self.drop(self.attn(self.ln1(h), cache, layer))
            return h + self.drop(self.mlp(self.ln2(h)))
        h = self.ln1(h + self.drop(self.attn(h, cache, layer)))  # the book's post-LN (3.20-3.23)
        return self.ln2(h + self.drop(self.mlp(h)))
