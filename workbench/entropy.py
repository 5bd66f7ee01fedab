"""Token statistics: log-probabilities of sampled tokens and entropies of the full distribution.

``H = logsumexp(z) - sum softmax(z) * z`` with ``z = logits / temperature``, in nats, computed
in float32 (even from bf16 logits) one chunk of rows at a time, so that no float32 copy of the
whole ``[B, T, V]`` logits is ever held, in the forward or (through per-chunk recomputation)
the backward pass. This is the formula; running it on a model (from hidden states and the LM
head, each group's prompt computed once) is :mod:`workbench.models.scoring`.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from . import _checks

DEFAULT_CHUNK_SIZE = None  #: rows per chunk; None: as many as fit CHUNK_ELEMENTS
CHUNK_ELEMENTS = 1 << 24  #: float32 elements of one chunk's logits (64 MiB) when chunk_size is None


def _rows_per_chunk(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(1, vocab))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


__all__ = ["token_stats", "DEFAULT_CHUNK_SIZE", "CHUNK_ELEMENTS"]


def _chunk_stats(z_chunk: torch.Tensor, tok_chunk: torch.Tensor, temperature: float):
    """float32 log-prob of ``tok_chunk`` and entropy for rows ``z_chunk [N, V]``."""
    z = z_chunk.float()
    if temperature != 1.0:
        z = z / temperature
    logp_all = z.log_softmax(-1)
    logp = logp_all.gather(-1, tok_chunk[:, None]).squeeze(-1)
    p = logp_all.exp()
    plogp = torch.where(p > 0, p * logp_all, torch.zeros((), dtype=z.dtype, device=z.device))
    entropy = -plogp.sum(-1)
    return logp, entropy


def token_stats(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies from ``logits [B, T, V]`` and ``tokens [B, T]``.

    ``logits[b, t]`` is the distribution that produced ``tokens[b, t]`` (already shifted).
    Returns ``(logprobs, entropies)``, both ``[B, T]`` float32 and 0 where ``mask`` is false.
    ``chunk_size`` rows are processed at a time (default: as many as keep one chunk's float32
    logits within :data:`CHUNK_ELEMENTS`, 64 MiB).

    The log-probabilities carry gradients to ``logits``; the entropies are detached weights
    unless ``entropy_grad=True`` (for an entropy bonus in the loss). Rows are processed
    ``chunk_size`` at a time; under autograd each chunk is recomputed in the backward pass
    instead of being stored.
    """
    logits = _checks.tensor("logits", logits)
    tokens = _checks.tensor("tokens", tokens)
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [B, T, V], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got dtype {logits.dtype}")
    if tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)}, expected logits.shape[:2] = {tuple(logits.shape[:2])}"
        )
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    _checks.positive("temperature", temperature)
    B, T, V = logits.shape
    chunk_size = _rows_per_chunk(chunk_size, V)
    m = (
        torch.ones(B, T, dtype=torch.bool, device=logits.device)
        if mask is None
        else _checks.mask("mask", mask, (B, T)).to(logits.device)
    )
    if V == 0:
        raise ValueError("logits has an empty vocabulary dimension (V = 0)")
    bad = m & ((tokens < 0) | (tokens >= V))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"tokens has an id outside [0, {V}) at valid position {idx}")

    flat_z = logits.reshape(B * T, V)
    flat_tok = torch.where(m, tokens, torch.zeros_like(tokens)).reshape(B * T).long()
    recompute = torch.is_grad_enabled() and logits.requires_grad
    logps, ents = [], []
    for start in range(0, B * T, chunk_size):
        z_c, t_c = flat_z[start : start + chunk_size], flat_tok[start : start + chunk_size]
        if recompute:
            logp, ent = checkpoint(_chunk_stats, z_c, t_c, temperature, use_reentrant=False)
        else:
            logp, ent = _chunk_stats(z_c, t_c, temperature)
        logps.append(logp)
        ents.append(ent if entropy_grad else ent.detach())
    zero = torch.zeros((), dtype=torch.float32, device=logits.device)
    logprobs = torch.where(m, torch.cat(logps).reshape(B, T), zero) if B * T else zero.expand(B, T)
    entropies = torch.where(m, torch.cat(ents).reshape(B, T), zero) if B * T else zero.expand(B, T)
    _checks.finite("logprobs (non-finite logits, or a sampled token with zero probability)", logprobs.detach(), where=m)
    _checks.finite("entropies (non-finite logits)", entropies.detach(), where=m)
    return logprobs, entropies
