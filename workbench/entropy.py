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

DEFAULT_CHUNK_SIZE = None  #: rows per chunk; None: as many as fit CHUNK_ELEMENTS
CHUNK_ELEMENTS = 1 << 24  #: float32 elements of one chunk's logits (64 MiB) when chunk_size is None


def _rows_per_chunk(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(1, vocab))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size

__all__ = ["token_stats", "token_stats_from_hidden", "token_stats_from_model", "DEFAULT_CHUNK_SIZE"]


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


class _LinearTokenStats(torch.autograd.Function):
    """Log-probs and entropies from hidden states and the LM-head weight, chunk by chunk.

    Forward and backward recompute ``hidden @ weight.T`` one chunk of rows at a time, so the
    ``[N, V]`` logits never exist whole, in any precision. Backward (closed form, as verl's
    ``FusedLinearForPPO``): with ``z`` the scaled logits, ``p = softmax(z)``,
    ``dz = g_logp * (onehot - p) - g_H * p * (log p + H)``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, chunk_size):
        N = hidden.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        for start in range(0, N, chunk_size):
            rows = slice(start, start + chunk_size)
            z = (hidden[rows] @ weight.T).float() / temperature
            lse_c = z.logsumexp(-1)
            logp_all = z - lse_c[:, None]
            p = logp_all.exp()
            plogp = torch.where(p > 0, p * logp_all, torch.zeros((), dtype=z.dtype, device=z.device))
            lse[rows] = lse_c
            logp[rows] = logp_all.gather(-1, tokens[rows, None]).squeeze(-1)
            ent[rows] = -plogp.sum(-1)
        ctx.save_for_backward(hidden, weight, tokens, lse, ent)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, tokens, lse, ent = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk_size
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            z = (hidden[rows] @ weight.T).float() / T
            logp_all = z - lse[rows, None]
            p = logp_all.exp()
            dz = torch.zeros_like(z)
            if grad_logp is not None:
                dz -= grad_logp[rows, None] * p
                dz.scatter_add_(-1, tokens[rows, None], grad_logp[rows, None])
            if grad_ent is not None:
                plogp = torch.where(p > 0, p * (logp_all + ent[rows, None]), torch.zeros((), dtype=z.dtype, device=z.device))
                dz -= grad_ent[rows, None] * plogp
            dz /= T
            if grad_hidden is not None:
                grad_hidden[rows] = (dz @ weight.float()).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += dz.T @ hidden[rows].float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def token_stats_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_stats` of ``logits = hidden @ weight.T`` without ever holding those logits.

    ``hidden [B, T, H]`` are the final hidden states that produced ``tokens [B, T]``,
    ``weight [V, H]`` the LM head (no bias). Only ``chunk_size x V`` logits exist at a time,
    in the forward and the backward pass; gradients reach ``hidden`` and ``weight``.
    """
    hidden = _checks.tensor("hidden", hidden)
    weight = _checks.tensor("weight", weight)
    tokens = _checks.tensor("tokens", tokens)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape [B, T, H], got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected [V, {hidden.shape[2]}]")
    if tuple(tokens.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected hidden.shape[:2] = {tuple(hidden.shape[:2])}")
    _checks.positive("temperature", temperature)
    B, T, _ = hidden.shape
    V = weight.shape[0]
    chunk_size = _rows_per_chunk(chunk_size, V)
    m = torch.ones(B, T, dtype=torch.bool, device=hidden.device) if mask is None else _checks.mask("mask", mask, (B, T)).to(hidden.device)
    bad = m & ((tokens < 0) | (tokens >= V))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"tokens has an id outside [0, {V}) at valid position {idx}")
    flat_tok = torch.where(m, tokens, torch.zeros_like(tokens)).reshape(-1).long()
    logp, ent = _LinearTokenStats.apply(hidden.reshape(B * T, -1), weight, flat_tok, float(temperature), chunk_size)
    if not entropy_grad:
        ent = ent.detach()
    zero = torch.zeros((), dtype=torch.float32, device=hidden.device)
    logprobs = torch.where(m, logp.reshape(B, T), zero)
    entropies = torch.where(m, ent.reshape(B, T), zero)
    _checks.finite("logprobs (non-finite hidden states or weight)", logprobs.detach(), where=m)
    _checks.finite("entropies (non-finite hidden states or weight)", entropies.detach(), where=m)
    return logprobs, entropies


def _linear_head(model):
    """``(decoder, lm_head_weight)`` when logits are exactly ``decoder(...) @ weight.T``, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = getattr(model, "model", None)
    config = getattr(model, "config", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or decoder is None:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None  # logits are not a plain linear map of the hidden states
    return decoder, head.weight


def token_stats_from_model(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    response_len: int | None = None,
    response_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    entropy_grad: bool = False,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a causal LM on ``input_ids [B, L]`` and return stats of its last ``response_len`` tokens.

    Token ``input_ids[:, j]`` is scored with the logits at position ``j - 1``; only the logits
    of the response positions are computed (``logits_to_keep``) when the model supports it.
    Returns ``(logprobs, entropies)`` of shape ``[B, response_len]`` aligned with
    ``input_ids[:, -response_len:]`` (default: all but the first token). Gradients flow to the
    log-probabilities when grad mode is on; entropies are detached unless ``entropy_grad``.

    ``method``: ``"hidden"`` runs the decoder and computes the statistics from its final hidden
    states and the LM-head weight (:func:`token_stats_from_hidden`: no ``[tokens, vocab]``
    logits are ever held); ``"logits"`` takes the model's logits (:func:`token_stats`);
    ``"auto"`` (default) uses ``"hidden"`` whenever the logits are a plain linear map of the
    hidden states (no bias, no soft-capping), else ``"logits"``.
    """
    _checks.choice("method", method, ("auto", "hidden", "logits"))
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
    tokens = input_ids[:, -response_len:]
    linear = _linear_head(model) if method != "logits" else None
    if method == "hidden" and linear is None:
        raise ValueError("method='hidden' needs a model whose logits are decoder(...) @ lm_head.weight.T")
    if linear is not None:
        decoder, weight = linear
        hidden = decoder(input_ids=input_ids, **kwargs).last_hidden_state[:, -(response_len + 1) : -1, :]
        return token_stats_from_hidden(hidden, weight, tokens, response_mask, temperature=temperature,
                                       chunk_size=chunk_size, entropy_grad=entropy_grad)
    try:
        out = model(input_ids=input_ids, logits_to_keep=response_len + 1, **kwargs)
    except TypeError:  # models without logits_to_keep
        out = model(input_ids=input_ids, **kwargs)
    logits = out.logits[:, -(response_len + 1) : -1, :]
    return token_stats(
        logits, tokens, response_mask, temperature=temperature, chunk_size=chunk_size, entropy_grad=entropy_grad
    )
