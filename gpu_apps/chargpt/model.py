"""A small decoder-only transformer over characters, with a KV cache for decoding.

Architecture (GPT-2 style): token + learned position embeddings, ``n_layer``
pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a final
LayerNorm and an output projection tied to the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTConfig:
    """Hyper-parameters of :class:`CharGPT`."""

    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head) < 1:
            raise ValueError("vocab_size, block_size, n_layer and n_head must be positive")


class KVCache:
    """Pre-allocated per-layer key/value buffers for incremental decoding.

    Holds ``length`` valid positions (``0..length-1``) for a batch; one instance
    belongs to one generation and must not be shared between threads.
    """

    def __init__(self, config: GPTConfig, batch_size: int = 1, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = config.block_size
        self.length = 0

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``/``v`` at positions ``start..`` of *layer*; return all valid keys/values."""
        end = start + k.size(2)
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} > {self.capacity}")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention using ``scaled_dot_product_attention``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, layer: int, kv_cache: KVCache | None, start_pos: int) -> Tensor:
        bsz, seq, emb = x.shape
        q, k, v = self.qkv(x).split(emb, dim=2)
        q, k, v = (t.view(bsz, seq, self.n_head, emb // self.n_head).transpose(1, 2) for t in (q, k, v))
        mask: Tensor | None = None
        is_causal = seq > 1
        if kv_cache is not None:
            k, v = kv_cache.update(layer, start_pos, k, v)
            if start_pos > 0 and seq > 1:
                # New queries at absolute positions start_pos.. see every cached key up to themselves.
                q_pos = torch.arange(start_pos, start_pos + seq, device=x.device)
                k_pos = torch.arange(k.size(2), device=x.device)
                mask, is_causal = k_pos[None, :] <= q_pos[:, None], False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(bsz, seq, emb)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network with a 4x GELU hidden layer."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, layer: int, kv_cache: KVCache | None, start_pos: int) -> Tensor:
        x = x + self.attn(self.ln1(x), layer, kv_cache, start_pos)
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """Character-level GPT language model."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        resid_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=resid_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of distinct trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """Allocate an empty :class:`KVCache` matching this model's device and dtype."""
        weight = self.tok_emb.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype)

    def forward(self, idx: Tensor, kv_cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        """Return logits ``(B, T, vocab_size)`` for token ids ``idx`` of shape ``(B, T)``.

        Without a cache this is an ordinary causal forward pass over positions
        ``0..T-1``.  With a cache, ``idx`` holds the tokens at absolute positions
        ``start_pos..start_pos+T-1``; their keys/values are appended to the cache
        (whose ``length`` must equal ``start_pos``) and attention covers all
        cached positions, so decoding one token costs one position's compute.
        """
        seq = idx.size(1)
        if kv_cache is not None and kv_cache.length != start_pos:
            raise ValueError(f"start_pos={start_pos} does not match cache length {kv_cache.length}")
        if start_pos + seq > self.config.block_size:
            raise ValueError(f"positions up to {start_pos + seq} exceed block_size={self.config.block_size}")
        pos = torch.arange(start_pos, start_pos + seq, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for layer, block in enumerate(self.blocks):
            x = block(x, layer, kv_cache, start_pos)
        if kv_cache is not None:
            kv_cache.length = start_pos + seq
        return self.lm_head(self.ln_f(x))

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (nats per character) of predicting ``targets`` from ``idx``."""
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
