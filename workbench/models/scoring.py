"""Token statistics of a model: log-probabilities and entropies from hidden states and the LM
head, without holding the ``[tokens, vocab]`` logits, and from a whole causal LM (each group's
prompt computed once).

The formula is :func:`workbench.entropy.token_stats`; this module runs it on a model: the fused
chunked linear-head statistics (PyTorch or the Triton kernels of
:mod:`workbench.models.triton_stats`), the decoder's hidden states, and the shared-prompt forward.
A LoRA model (``peft``) is scored through the transformers model inside it, whose layers carry
the adapter (:func:`workbench.models.lora.base_model`): the statistics of its own logits.
"""

from __future__ import annotations

import os
import warnings

import torch

from .. import _checks
from ..entropy import DEFAULT_CHUNK_SIZE, _rows_per_chunk, token_stats
from .generation import cache_argument, shared_prompt_cache
from .lora import base_model

__all__ = ["token_stats_from_hidden", "token_stats_from_model", "IMPLS"]


class _LinearTokenStats(torch.autograd.Function):
    """Log-probs and entropies from hidden states and the LM-head weight, chunk by chunk.

    Forward and backward recompute ``hidden @ weight.T`` one chunk of rows at a time, so the
    ``[N, V]`` logits never exist whole, in any precision. Backward (closed form, as verl's
    ``FusedLinearForPPO``): with ``z`` the scaled logits, ``p = softmax(z)``,
    ``dz = g_logp * (onehot - p) - g_H * p * (log p + H)``.

    ``impl="torch"``: the chunk's statistics and gradient in float32 PyTorch ops (the reference).
    ``impl="triton"``: the fused kernels of :mod:`workbench.models.triton_stats`, which read the chunk's
    logits (in the weight's dtype) once per direction and write the gradient over them.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # the backward recomputes under the forward's autocast
    def forward(ctx, hidden, weight, tokens, temperature, chunk_size, impl):
        N = hidden.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        for start in range(0, N, chunk_size):
            rows = slice(start, start + chunk_size)
            if impl == "triton":
                lse[rows], logp[rows], ent[rows] = _triton().stats_forward(
                    hidden[rows] @ weight.T, tokens[rows], temperature
                )
                continue
            z = (hidden[rows] @ weight.T).float() / temperature
            lse_c = z.logsumexp(-1)
            logp_all = z - lse_c[:, None]
            p = logp_all.exp()
            plogp = torch.where(p > 0, p * logp_all, torch.zeros((), dtype=z.dtype, device=z.device))
            lse[rows] = lse_c
            logp[rows] = logp_all.gather(-1, tokens[rows, None]).squeeze(-1)
            ent[rows] = -plogp.sum(-1)
        ctx.save_for_backward(hidden, weight, tokens, lse, ent)
        ctx.temperature, ctx.chunk_size, ctx.impl = temperature, chunk_size, impl
        return logp, ent

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, tokens, lse, ent = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk_size
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            if ctx.impl == "triton":  # the gradient overwrites the recomputed logits, in their dtype
                z = hidden[rows] @ weight.T
                dz = _triton().stats_backward(
                    z,
                    tokens[rows],
                    lse[rows],
                    ent[rows],
                    None if grad_logp is None else grad_logp[rows],
                    None if grad_ent is None else grad_ent[rows],
                    T,
                    out=z,
                )
                if grad_hidden is not None:
                    grad_hidden[rows] = dz @ weight
                if grad_weight is not None:
                    grad_weight += (dz.T @ hidden[rows]).float()
                continue
            z = (hidden[rows] @ weight.T).float() / T
            logp_all = z - lse[rows, None]
            p = logp_all.exp()
            dz = torch.zeros_like(z)
            if grad_logp is not None:
                dz -= grad_logp[rows, None] * p
                dz.scatter_add_(-1, tokens[rows, None], grad_logp[rows, None])
            if grad_ent is not None:
                plogp = torch.where(
                    p > 0, p * (logp_all + ent[rows, None]), torch.zeros((), dtype=z.dtype, device=z.device)
                )
                dz -= grad_ent[rows, None] * plogp
            dz /= T
            if grad_hidden is not None:
                grad_hidden[rows] = (dz @ weight.float()).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += dz.T @ hidden[rows].float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None


IMPLS = ("auto", "torch", "triton")
_TRITON_CHECKED: dict[str, bool] = {}


def _triton():
    """:mod:`workbench.models.triton_stats`, imported on first use (importing triton takes a quarter second)."""
    from . import triton_stats

    return triton_stats


def _resolve_impl(impl: str, device: torch.device) -> str:
    """``"auto"``: ``$WORKBENCH_STATS_IMPL`` if set, else the Triton kernels on CUDA once they have
    matched the PyTorch path on this device (checked on first use; a failure warns and keeps
    PyTorch), else PyTorch."""
    _checks.choice("impl", impl, IMPLS)
    if impl == "auto":
        impl = os.environ.get("WORKBENCH_STATS_IMPL", "auto")
        _checks.choice("WORKBENCH_STATS_IMPL", impl, IMPLS)
    if impl == "auto":
        return "triton" if device.type == "cuda" and _triton_works(device) else "torch"
    if impl == "triton" and not _triton().available(device):
        raise RuntimeError(
            f"impl='triton' needs triton and a CUDA device (or TRITON_INTERPRET=1); "
            f"got a {device.type} tensor" + ("" if _triton().triton else " and no triton installed")
        )
    return impl


def _triton_works(device: torch.device) -> bool:
    key = str(device)
    if key not in _TRITON_CHECKED:
        _TRITON_CHECKED[key] = False
        if _triton().available(device):
            try:
                _TRITON_CHECKED[key] = _parity(device) < 1e-3
                if not _TRITON_CHECKED[key]:
                    warnings.warn(
                        f"the Triton token-statistics kernels disagree with PyTorch on {key}; using the PyTorch path",
                        stacklevel=3,
                    )
            except Exception as e:  # a compiler or driver problem: keep the reference path
                warnings.warn(
                    f"the Triton token-statistics kernels failed on {key} ({type(e).__name__}: {e}); "
                    "using the PyTorch path",
                    stacklevel=3,
                )
    return _TRITON_CHECKED[key]


def _parity(device: torch.device) -> float:
    """Largest difference between the two paths (values and both gradients) on a small case."""
    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(40, 64, generator=g).to(device)
    w = (torch.randn(1000, 64, generator=g) / 8).to(device)
    tok = torch.randint(0, 1000, (40,), generator=g).to(device)
    out = []
    # the first call may come from a no-grad scoring pass under bf16 autocast: check in float32, with grads
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for impl in ("torch", "triton"):
            hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
            logp, ent = _LinearTokenStats.apply(hh, ww, tok, 0.9, 16, impl)
            (logp.sum() + 0.5 * ent.sum()).backward()
            out.append(torch.cat([logp.detach(), ent.detach(), hh.grad.flatten(), ww.grad.flatten()]))
    return float((out[0] - out[1]).abs().max())


def token_stats_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    entropy_grad: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_stats` of ``logits = hidden @ weight.T`` without ever holding those logits.

    ``hidden [B, T, H]`` are the final hidden states that produced ``tokens [B, T]``,
    ``weight [V, H]`` the LM head (no bias). Only ``chunk_size x V`` logits exist at a time,
    in the forward and the backward pass; gradients reach ``hidden`` and ``weight``. The LM head
    runs on the rows where ``mask`` is true only (log-prob and entropy 0 elsewhere).

    ``impl``: ``"torch"`` (float32 PyTorch ops per chunk, the reference), ``"triton"`` (the fused
    kernels of :mod:`workbench.models.triton_stats`: one read of each chunk's logits per direction, the
    gradient written over them), or ``"auto"`` (default): ``$WORKBENCH_STATS_IMPL`` if set, else
    Triton on CUDA once it has matched PyTorch on a small case on that device, else PyTorch.
    """
    hidden = _checks.tensor("hidden", hidden)
    weight = _checks.tensor("weight", weight)
    tokens = _checks.tensor("tokens", tokens)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must have shape [B, T, H], got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected [V, {hidden.shape[2]}]")
    if tuple(tokens.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)}, expected hidden.shape[:2] = {tuple(hidden.shape[:2])}"
        )
    _checks.positive("temperature", temperature)
    B, T, _ = hidden.shape
    V = weight.shape[0]
    chunk_size = _rows_per_chunk(chunk_size, V)
    m = (
        torch.ones(B, T, dtype=torch.bool, device=hidden.device)
        if mask is None
        else _checks.mask("mask", mask, (B, T)).to(hidden.device)
    )
    bad = m & ((tokens < 0) | (tokens >= V))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"tokens has an id outside [0, {V}) at valid position {idx}")
    impl = _resolve_impl(impl, hidden.device)
    # only the valid rows reach the LM head (padding positions cost nothing), scattered back after
    logp, ent = _LinearTokenStats.apply(hidden[m], weight, tokens[m].long(), float(temperature), chunk_size, impl)
    if not entropy_grad:
        ent = ent.detach()
    zeros = torch.zeros(B, T, dtype=torch.float32, device=hidden.device)
    logprobs, entropies = zeros.masked_scatter(m, logp), zeros.masked_scatter(m, ent)
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


def _decoder_output(model, decoder, input_ids, kwargs) -> torch.Tensor:
    """The decoder's final hidden states from a forward of the whole (wrapped) model that computes
    the logits of the last position only (``logits_to_keep=1``)."""
    captured = []
    handle = decoder.register_forward_hook(lambda module, args, out: captured.append(out.last_hidden_state))
    try:
        model(input_ids=input_ids, logits_to_keep=1, **kwargs)
    finally:
        handle.remove()
    return captured[0]


def _shared_prompt_hidden(decoder, input_ids, attention_mask, response_len: int, group_size: int) -> torch.Tensor:
    """The decoder's final hidden states at the positions that score the last ``response_len``
    tokens, with each group's prompt (its first ``L - response_len`` tokens, the same in the
    group's ``group_size`` consecutive rows) computed once and its KV cache repeated to the rows."""
    B, L = input_ids.shape
    P, n = L - response_len, group_size
    if B % n:
        raise ValueError(f"group_size={n} does not divide the {B} rows")
    prompts, prompt_mask = input_ids[::n, :P], attention_mask[::n, :P]
    if not (torch.equal(input_ids[:, :P], prompts.repeat_interleave(n, 0))) or not torch.equal(
        attention_mask[:, :P], prompt_mask.repeat_interleave(n, 0)
    ):
        raise ValueError(f"group_size={n}: the rows of a group must share their prompt (the first {P} tokens)")
    out, cache = shared_prompt_cache(decoder, prompts, prompt_mask, n)
    first = out.last_hidden_state[:, -1:].repeat_interleave(n, 0)  # scores each reply's first token
    if response_len == 1:
        return first
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # as the unshared forward counts them
    rest = decoder(
        input_ids=input_ids[:, P:-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids[:, P:-1],
        use_cache=True,
        **{cache_argument(decoder): cache},
    ).last_hidden_state
    return torch.cat([first, rest], 1)


def _response_hidden(model, decoder, input_ids, kwargs: dict, response_len: int, group_size: int) -> torch.Tensor:
    """The decoder's final hidden states at the positions that score the last ``response_len``
    tokens: each group's prompt computed once where it can be (see :func:`token_stats_from_model`)."""
    wrapped = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    if group_size > 1 and not wrapped and not _checkpointing(decoder):
        mask = kwargs["attention_mask"]
        mask = torch.ones_like(input_ids) if mask is None else mask
        return _shared_prompt_hidden(decoder, input_ids, mask, response_len, group_size)
    if wrapped:  # DDP: forward through the wrapper (it syncs the gradients), one position's logits
        hidden = _decoder_output(model, decoder, input_ids, kwargs)
    else:
        hidden = decoder(input_ids=input_ids, **kwargs).last_hidden_state
    return hidden[:, -(response_len + 1) : -1, :]


def _checkpointing(module: torch.nn.Module) -> bool:
    """Whether a forward of ``module`` now would run checkpointed layers (which drop a KV cache)."""
    if not (module.training and torch.is_grad_enabled()):
        return False
    return any(getattr(m, "gradient_checkpointing", False) for m in module.modules())


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
    impl: str = "auto",
    group_size: int = 1,
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
    hidden states (no bias, no soft-capping), else ``"logits"``. ``impl`` picks the kernels of
    the ``"hidden"`` method (see :func:`token_stats_from_hidden`).

    ``group_size > 1``: the rows come in groups of ``group_size`` consecutive rows that share
    their prompt (the first ``L - response_len`` tokens; checked). The ``"hidden"`` method then
    runs each group's prompt once and repeats its KV cache to the group's rows (with gradients:
    they reach the prompt's one computation from every row), then runs the responses: the same
    numbers to float rounding, with ``n`` times less prompt work. Three cases keep the whole
    rows instead: the ``"logits"`` method; a ``DistributedDataParallel`` model (its wrapper
    must see one forward per backward); and checkpointed layers under gradients (transformers'
    checkpointed layers drop the KV cache, which the backward's replay would write twice).
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
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    kwargs = {"attention_mask": attention_mask}
    if attention_mask is not None:
        _checks.mask("attention_mask", attention_mask, input_ids.shape)
        # Left padding: positions must count from the first real token, as in generation.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs["position_ids"] = position_ids
    tokens = input_ids[:, -response_len:]
    wrapped = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    linear = _linear_head(base_model(model.module if wrapped else model)) if method != "logits" else None
    if method == "hidden" and linear is None:
        raise ValueError("method='hidden' needs a model whose logits are decoder(...) @ lm_head.weight.T")
    if linear is not None:
        decoder, weight = linear
        return token_stats_from_hidden(
            _response_hidden(model, decoder, input_ids, kwargs, response_len, group_size),
            weight,
            tokens,
            response_mask,
            temperature=temperature,
            chunk_size=chunk_size,
            entropy_grad=entropy_grad,
            impl=impl,
        )
    try:
        out = model(input_ids=input_ids, logits_to_keep=response_len + 1, **kwargs)
    except TypeError:  # models without logits_to_keep
        out = model(input_ids=input_ids, **kwargs)
    logits = out.logits[:, -(response_len + 1) : -1, :]
    return token_stats(
        logits, tokens, response_mask, temperature=temperature, chunk_size=chunk_size, entropy_grad=entropy_grad
    )
