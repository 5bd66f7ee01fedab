"""Token statistics: log-probabilities of sampled tokens and entropies of the full distribution.

``H = logsumexp(z) - sum softmax(z) * z`` with ``z = logits / temperature``, in nats, computed
in float32 (even from bf16 logits) one chunk of rows at a time, so that no float32 copy of the
whole ``[B, T, V]`` logits is ever held, in the forward or (through per-chunk recomputation)
the backward pass.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from . import _checks

DEFAULT_CHUNK_SIZE = 1024

__all__ = ["token_stats", "token_stats_from_model", "DEFAULT_CHUNK_SIZE"]


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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies from ``logits [B, T, V]`` and ``tokens [B, T]``.

    ``logits[b, t]`` is the distribution that produced ``tokens[b, t]`` (already shifted).
    Returns ``(logprobs, entropies)``, both ``[B, T]`` float32 and 0 where ``mask`` is false.

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
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, V = logits.shape
    m = torch.ones(B, T, dtype=torch.bool, device=logits.device) if mask is None else _checks.mask("mask", mask, (B, T)).to(logits.device)
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


def token_stats_from_model(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    response_len: int | None = None,
    response_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a causal LM on ``input_ids [B, L]`` and return stats of its last ``response_len`` tokens.

    Token ``input_ids[:, j]`` is scored with the logits at position ``j - 1``; only the logits
    of the response positions are computed (``logits_to_keep``) when the model supports it.
    Returns ``(logprobs, entropies)`` of shape ``[B, response_len]`` aligned with
    ``input_ids[:, -response_len:]`` (default: all but the first token). Gradients flow to the
    log-probabilities when grad mode is on; entropies are detached unless ``entropy_grad``.
    """
    input_ids = _checks.tensor("input_ids", input_ids)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [B, L], got {tuple(input_ids.shape)}")
    L = input_ids.shape[1]
    if response_len is None:
        response_len = L - 1
    if not isinstance(response_len, int) or not 1 <= response_len <= L - 1:
        raise ValueError(f"response_len must be an int in [1, {L - 1}] for input length {L}, got {response_len!r}")
    kwargs = {"attention_mask": attention_mask}
    if attention_mask is not None:
        _checks.mask("attention_mask", attention_mask, input_ids.shape)
        # Left padding: positions must count from the first real token, as in generation.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs["position_ids"] = position_ids
    try:
        out = model(input_ids=input_ids, logits_to_keep=response_len + 1, **kwargs)
    except TypeError:  # models without logits_to_keep
        out = model(input_ids=input_ids, **kwargs)
    logits = out.logits[:, -(response_len + 1) : -1, :]
    tokens = input_ids[:, -response_len:]
    return token_stats(
        logits, tokens, response_mask, temperature=temperature, chunk_size=chunk_size, entropy_grad=entropy_grad
    )
