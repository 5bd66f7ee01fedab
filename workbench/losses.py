"""Policy losses: the clipped surrogate of GRPO, DAPO, GTPO and GRPO-S.

Per token, with ``rho = exp(logp_new - logp_old)``::

    L[i,t] = -min(rho * A[i,t], clip(rho, 1 - eps_low, 1 + eps_high) * A[i,t])
             + beta_kl * k3(ref, new) - entropy_coef * H_new[i,t]

with ``k3 = exp(ref - new) - (ref - new) - 1``. ``level="sequence"`` is GRPO-S's own objective
(Eq. 10-11): the importance weight of a response is the arithmetic mean of its token ratios,
``w_i = mean_t rho[i,t]``, and ``L = -(1/G) sum_i min(w_i A_i, clip(w_i) A_i)``.

``clip_ratio_c`` (off by default) adds verl's dual clip: where ``A < 0`` the clipped loss is
capped at ``-A * clip_ratio_c`` (verl's default policy loss uses ``clip_ratio_c = 3``), so that
a token whose ratio has grown far above 1 cannot dominate a negative update.

Aggregation (``agg``), names as in verl:

- ``"token-mean"``: sum over all valid tokens / number of valid tokens (DAPO, GTPO);
- ``"seq-mean-token-mean"``: mean over each response's tokens, then over responses (GRPO);
- ``"seq-mean-token-sum"``: sum over each response's tokens, mean over responses;
- ``"seq-mean-token-sum-norm"``: sum over all tokens / (responses * ``norm_len``) (Dr. GRPO), a
  constant length: TRL divides by ``max_completion_length``, verl by a configured constant; the
  trainer passes ``max_new_tokens``. Without ``norm_len`` the padded width of ``values`` is used,
  which changes from batch to batch.

``denominator`` replaces the local count (valid tokens for ``token-mean``, responses for the
``seq-mean-*`` modes) so that the losses of micro-batches add up to the mean over the whole
batch, as TRL's ``num_items_in_batch`` does.

Comparing numbers with TRL and verl: the KL and entropy terms are aggregated with ``agg``, as in
verl; TRL averages its entropy term over tokens whatever its loss type, so the two agree with
TRL only for ``agg="token-mean"``.

Loss modes (``loss_mode``, a registry like verl's ``register_policy_loss``; see
``entropy-methods.md``): ``"vanilla"`` is the clipped surrogate above; ``"clip_cov"`` and
``"kl_cov"`` (arXiv 2505.22617, verl's ``compute_policy_loss_clip_cov`` / ``_kl_cov``) and
``"erc"`` (entropy ratio clipping, arXiv 2512.05591, Kwai-Klear/ERC) change the per-token loss of
a few tokens. Independently of the mode, ``top_entropy_quantile`` / ``top_entropy_keep`` train
on the forking tokens only (arXiv 2506.01939, TRL's ``top_entropy_quantile``): the per-token loss
is multiplied by the keep mask, the denominator is unchanged. Adding a mode is one function and
its ``@register_policy_loss`` line.

The entropy bonus's coefficient can follow :func:`linear_entropy_coef` (a schedule over the run)
or :func:`adaptive_entropy_coef` (Skywork-OR1's controller, as in TRL), both pure functions of the
step the trainer calls between optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import _checks

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps a wild ratio finite; irrelevant in normal ranges
ENTROPY_RATIO_EPS = 1e-8  # ERC's (H_new + 1e-8) / (H_old + 1e-8), as in Kwai-Klear/ERC
#: The set the forking threshold runs over: the optimizer step's rows with the behaviour entropies
#: (the workbench's default), or each loss call with the current policy's (TRL).
TOP_ENTROPY_SCOPES = ("mini_batch", "micro_batch")
#: The keyword arguments of :func:`policy_loss` that loss modes read (``TokenTerms.options``).
MODE_OPTIONS = ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "ppo_kl_coef", "erc_low", "erc_high")
_TENSOR_ROLES = {
    "entropies": "the current policy's per-token entropies, computed in this forward",
    "entropies_old": "the behaviour policy's per-token entropies, stored at sampling",
}

__all__ = [
    "policy_loss",
    "aggregate",
    "AGGREGATIONS",
    "LEVELS",
    "LOSS_MODES",
    "MODE_OPTIONS",
    "TOP_ENTROPY_SCOPES",
    "LossMode",
    "ModeOutput",
    "TokenTerms",
    "register_policy_loss",
    "check_loss_mode_options",
    "token_covariance",
    "clip_cov_tokens",
    "kl_cov_tokens",
    "erc_keep",
    "top_entropy_mask",
    "top_entropy_threshold",
    "linear_entropy_coef",
    "adaptive_entropy_coef",
]


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, agg: str, denominator: float | None = None, norm_len: int | None = None
) -> torch.Tensor:
    """Reduce per-token ``values [B, T]`` to a scalar with one of :data:`AGGREGATIONS`.

    ``norm_len``: the constant length of ``"seq-mean-token-sum-norm"`` (default: ``T``, the
    padded width); ``denominator``: see the module docstring.
    """
    _checks.choice("agg", agg, AGGREGATIONS)
    if norm_len is not None:
        _checks.positive("norm_len", norm_len)
    w = mask.to(values.dtype)
    if agg == "token-mean":
        total = (values * w).sum()
        return total / (denominator if denominator is not None else w.sum().clamp(min=1))
    n_seq = denominator if denominator is not None else values.shape[0]
    if agg == "seq-mean-token-mean":
        per_seq = (values * w).sum(-1) / w.sum(-1).clamp(min=1)
    elif agg == "seq-mean-token-sum":
        per_seq = (values * w).sum(-1)
    else:  # seq-mean-token-sum-norm
        per_seq = (values * w).sum(-1) / (values.shape[-1] if norm_len is None else norm_len)
    return per_seq.sum() / n_seq


# ---------------------------------------------------------------------------- forking tokens


def top_entropy_threshold(entropies: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """The forking-token threshold ``thr = quantile({H[i,t] : m[i,t] = 1}, 1 - rho)``, a 0-d tensor.

    Linear interpolation, the same number as ``torch.quantile`` (as TRL's
    ``get_high_entropy_mask`` computes it, in float32; float64 entropies stay float64), from two
    order statistics (``torch.kthvalue``): ``torch.quantile`` refuses more than 16 M elements, this
    takes any size. ``+inf`` when no token is valid, so that nothing passes it.
    """
    values = _valid_values(entropies, mask)
    _check_rho("rho", rho)
    if values.numel() == 0:
        return torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    return _quantile_linear(values, 1.0 - rho)


def top_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """Forking tokens ("Beyond the 80/20 rule", arXiv 2506.01939; TRL's ``top_entropy_quantile``).

    ``keep[i,t] = m[i,t] and H[i,t] >= thr`` with ``thr = quantile({H : m = 1}, 1 - rho)``
    (:func:`top_entropy_threshold`): about the fraction ``rho`` of the valid tokens with the highest
    entropy, every token tied with the threshold included. ``rho = 1`` keeps every valid token;
    no valid token gives an all-false mask. Returns bool, the shape of ``entropies``.
    """
    values = _valid_values(entropies, mask)
    _check_rho("rho", rho)
    m = _checks.mask("mask", mask, entropies.shape).to(entropies.device)
    if rho == 1 or values.numel() == 0:  # all valid tokens (none)
        return m.clone()
    thr = _quantile_linear(values, 1.0 - rho)
    return (entropies.detach().to(thr.dtype) >= thr) & m


def _valid_values(entropies, mask) -> torch.Tensor:
    """The valid entries of ``entropies`` as a 1-d float32 (float64) tensor, checked finite."""
    entropies = _checks.tensor("entropies", entropies)
    if not entropies.is_floating_point():
        raise TypeError(f"entropies must be a floating tensor, got dtype {entropies.dtype}")
    m = _checks.mask("mask", mask, entropies.shape).to(entropies.device)
    dtype = torch.float64 if entropies.dtype == torch.float64 else torch.float32
    values = entropies.detach()[m].to(dtype)
    _checks.finite("entropies", values)
    return values


def _check_rho(name: str, rho) -> None:
    _checks.number(name, rho)
    if not 0 < rho <= 1:
        raise ValueError(f"{name} must be in (0, 1] (the fraction of valid tokens kept; 1 keeps all), got {rho!r}")


def _quantile_linear(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) for a 1-d tensor of any size.

    As ``torch.quantile``: ``rank = q * (n - 1)`` in the values' dtype, the order statistics at
    ``floor(rank)`` and ``ceil(rank)``, ``lerp`` by ``rank - floor(rank)``. Past 2**24 elements a
    float32 rank is no longer exact, so it is computed in float64 there.
    """
    n = values.numel()
    rank = torch.tensor(q, dtype=values.dtype if n <= 2**24 else torch.float64) * (n - 1)
    below, above = int(rank), min(math.ceil(float(rank)), n - 1)
    weight = (rank - below).to(dtype=values.dtype, device=values.device)
    low = torch.kthvalue(values, below + 1).values
    high = low if above == below else torch.kthvalue(values, above + 1).values
    return torch.lerp(low, high, weight)


# ---------------------------------------------------------------------------- loss modes


@dataclass(frozen=True)
class TokenTerms:
    """What a loss mode sees; tensors are ``[B, T]``, 0 (ratio 1) at masked positions."""

    ratio: torch.Tensor  # exp(logp_new - logp_old), the log-ratio clamped to +-LOG_RATIO_CLAMP
    log_ratio: torch.Tensor  # logp_new - logp_old (clamped), with gradient
    advantages: torch.Tensor  # detached
    logp_new: torch.Tensor  # with gradient, not zeroed at masked positions
    mask: torch.Tensor  # bool, the valid tokens of this loss call
    eps_low: float
    eps_high: float
    clip_ratio_c: float | None
    entropies: torch.Tensor | None  # current policy (with gradient: detach before using as a weight)
    entropies_old: torch.Tensor | None  # behaviour policy
    options: dict  # the MODE_OPTIONS of this call, by name
    generator: torch.Generator | None


class ModeOutput(NamedTuple):
    """A loss mode's result: the per-token loss, the clip indicators and extra metrics."""

    loss: torch.Tensor  # per-token loss [B, T]; aggregation ignores masked positions
    clip_low: torch.Tensor  # bool [B, T]: ratio below 1 - eps_low with A < 0 (clip_frac_low)
    clip_high: torch.Tensor  # bool [B, T]: above 1 + eps_high with A > 0 (clip_frac_high)
    clip_dual: torch.Tensor  # bool [B, T]: capped by the dual clip (clip_frac_dual)
    metrics: dict  # floats, e.g. {"clip_cov_frac": 0.01}


@dataclass(frozen=True)
class LossMode:
    """A registered ``loss_mode`` of :func:`policy_loss`.

    ``options``: the :data:`MODE_OPTIONS` it reads; ``needs``: the tensors it cannot do without;
    ``clipped``: whether its loss has PPO's ratio clip (``clip_ratio_c`` is refused otherwise).
    """

    name: str
    fn: Callable[[TokenTerms], ModeOutput]
    options: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    clipped: bool = True


LOSS_MODES: dict[str, LossMode] = {}


def register_policy_loss(name: str, *, options=(), needs=(), clipped: bool = True):
    """Decorator: register ``fn(terms: TokenTerms) -> ModeOutput`` as ``policy_loss(loss_mode=name)``.

    A name already taken is refused (as verl's ``register_policy_loss`` would silently replace it).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a loss mode's name must be a non-empty string, got {name!r}")
    if name in LOSS_MODES:
        raise ValueError(f"a loss mode named {name!r} is already registered; pick another name")
    for option in options:
        if option not in MODE_OPTIONS:
            raise ValueError(f"option {option!r} is not a loss-mode keyword of policy_loss; known: {MODE_OPTIONS}")
    for tensor in needs:
        if tensor not in _TENSOR_ROLES:
            raise ValueError(f"needs: {tensor!r} is not one of {tuple(_TENSOR_ROLES)}")

    def decorator(fn):
        LOSS_MODES[name] = LossMode(name, fn, tuple(options), tuple(needs), clipped)
        return fn

    return decorator


def check_loss_mode_options(options: dict) -> None:
    """Raise ``ValueError`` naming the problem unless every entry of ``options`` is a valid
    :data:`MODE_OPTIONS` value (ratios in (0, 1], ``clip_cov_lb < clip_cov_ub``, ...)."""
    for name, value in options.items():
        if name not in MODE_OPTIONS:
            raise ValueError(f"{name!r} is not a loss-mode option; known: {', '.join(MODE_OPTIONS)}")
        _checks.number(name, value)
        if name in ("clip_cov_ratio", "kl_cov_ratio") and not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1] (the fraction of valid tokens selected), got {value!r}")
        if name in ("ppo_kl_coef", "erc_low"):
            _checks.positive(name, value, allow_zero=True)
    for low, high in (("clip_cov_lb", "clip_cov_ub"), ("erc_low", "erc_high")):
        if low in options and high in options and not options[low] < options[high]:
            raise ValueError(f"{low} must be < {high}, got {options[low]!r} and {options[high]!r}")


def _clipped(ratio, adv, eps_low, eps_high, clip_ratio_c):
    """The clipped surrogate loss per item and its low/high/dual clip indicators (before masking)."""
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    low, high = (ratio < 1 - eps_low) & (adv < 0), (ratio > 1 + eps_high) & (adv > 0)
    dual = torch.zeros_like(low)
    if clip_ratio_c is not None:  # verl's dual clip: negative advantages' losses capped at -A * c
        cap = -adv * clip_ratio_c
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    return loss, low, high, dual


@register_policy_loss("vanilla")
def vanilla_loss(x: TokenTerms) -> ModeOutput:
    """PPO's clipped surrogate ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``, capped at
    ``-A * clip_ratio_c`` for ``A < 0`` with the dual clip: the workbench's loss before loss modes."""
    loss, low, high, dual = _clipped(x.ratio, x.advantages, x.eps_low, x.eps_high, x.clip_ratio_c)
    return ModeOutput(loss, low, high, dual, {})


def token_covariance(advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``cov[i,t] = (A[i,t] - mean_m(A)) * (logp[i,t] - mean_m(logp))``, the means over the valid
    tokens of ``mask`` (0 elsewhere; ``logp`` detached): Clip-Cov's and KL-Cov's selection score.

    verl's ``masked_mean`` divides by ``count + 1e-8``; this divides by the count (the same
    float32 number for any count below ~10^6)."""
    m = _checks.mask("mask", mask, logp.shape).to(logp.device)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    a = torch.where(m, advantages.detach().to(logp.dtype), zero)
    lp = torch.where(m, logp.detach(), zero)
    n = m.sum().clamp(min=1)
    return torch.where(m, (a - a.sum() / n) * (lp - lp.sum() / n), zero)


@register_policy_loss("clip_cov", options=("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"))
def clip_cov_loss(x: TokenTerms) -> ModeOutput:
    """Clip-Cov (arXiv 2505.22617; verl's ``compute_policy_loss_clip_cov``): PPO's clipped loss, and
    the tokens of :func:`clip_cov_tokens` get loss 0 and no gradient (denominator unchanged). Metric
    ``clip_cov_frac``: the fraction of valid tokens zeroed. verl has no dual clip here;
    ``clip_ratio_c`` still applies when given."""
    loss, low, high, dual = _clipped(x.ratio, x.advantages, x.eps_low, x.eps_high, x.clip_ratio_c)
    chosen = _clip_cov_choice(x.ratio, x.advantages, x.logp_new, x.mask, x.eps_low, x.eps_high, x.options, x.generator)
    loss = loss * (~chosen).to(loss.dtype)
    return ModeOutput(loss, low, high, dual, {"clip_cov_frac": int(chosen.sum()) / int(x.mask.sum())})


def clip_cov_tokens(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The tokens Clip-Cov detaches, bool ``[B, T]``.

    Candidates: valid tokens that PPO's clip did not already clip (``-A clip(rho) <= -A rho``,
    ``rho = exp(logp_new - logp_old)``) with ``clip_cov_lb < cov < clip_cov_ub``
    (:func:`token_covariance` over the valid tokens). ``k = max(int(clip_cov_ratio * N), 1)`` of them
    (all if fewer) are drawn uniformly, as verl: the first ``k`` of ``torch.randperm`` of the
    candidates in row-major order, from ``generator`` (``None``: the global generator, as verl).
    """
    m = _selection_inputs(mask, logp_new=logp_new, logp_old=logp_old, advantages=advantages)
    check_loss_mode_options({"clip_cov_ratio": clip_cov_ratio, "clip_cov_lb": clip_cov_lb, "clip_cov_ub": clip_cov_ub})
    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    log_ratio = torch.where(m, logp_new.detach() - logp_old.detach(), zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    adv = torch.where(m, advantages.detach().to(logp_new.dtype), zero)
    options = {"clip_cov_ratio": clip_cov_ratio, "clip_cov_lb": clip_cov_lb, "clip_cov_ub": clip_cov_ub}
    return _clip_cov_choice(log_ratio.exp(), adv, logp_new, m, eps_low, eps_high, options, generator)


def _clip_cov_choice(ratio, adv, logp, m, eps_low, eps_high, options, generator) -> torch.Tensor:
    by_ppo = -(ratio.clamp(1 - eps_low, 1 + eps_high) * adv) > -(ratio * adv)
    cov = token_covariance(adv, logp, m)
    candidates = m & ~by_ppo & (cov > options["clip_cov_lb"]) & (cov < options["clip_cov_ub"])
    k = max(int(options["clip_cov_ratio"] * int(m.sum())), 1)
    where = candidates.flatten().nonzero().squeeze(1)
    chosen = torch.zeros_like(candidates).flatten()
    if where.numel():
        device = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(where.numel(), generator=generator, device=device).to(where.device)
        chosen[where[perm[:k]]] = True
    return chosen.view_as(candidates)


@register_policy_loss("kl_cov", options=("kl_cov_ratio", "ppo_kl_coef"), clipped=False)
def kl_cov_loss(x: TokenTerms) -> ModeOutput:
    """KL-Cov (arXiv 2505.22617; verl's ``compute_policy_loss_kl_cov``): the unclipped loss ``-A rho``
    for every valid token, plus ``ppo_kl_coef * |logp - logp_old|`` on the tokens of
    :func:`kl_cov_tokens`. Metric ``kl_cov_frac``: ``k / N``. No clip: the clip fractions are 0 and
    ``clip_ratio_c`` is refused."""
    loss = -(x.advantages * x.ratio)
    chosen = _kl_cov_choice(x.advantages, x.logp_new, x.mask, x.options["kl_cov_ratio"])
    loss = torch.where(chosen, loss + x.options["ppo_kl_coef"] * x.log_ratio.abs(), loss)
    none = torch.zeros_like(x.mask)
    return ModeOutput(loss, none, none, none, {"kl_cov_frac": int(chosen.sum()) / int(x.mask.sum())})


def kl_cov_tokens(advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor, *, kl_cov_ratio: float = 2e-4):
    """The tokens KL-Cov penalises, bool ``[B, T]``: the top ``k = max(1, int(N * kl_cov_ratio))``
    valid tokens by :func:`token_covariance`. Ties go to the earlier token in row-major order
    (verl's ``torch.topk`` leaves their order unspecified)."""
    m = _selection_inputs(mask, logp=logp, advantages=advantages)
    check_loss_mode_options({"kl_cov_ratio": kl_cov_ratio})
    return _kl_cov_choice(advantages, logp, m, kl_cov_ratio)


def _kl_cov_choice(adv, logp, m, kl_cov_ratio) -> torch.Tensor:
    cov = token_covariance(adv, logp, m)
    k = max(1, int(int(m.sum()) * kl_cov_ratio))
    where = m.flatten().nonzero().squeeze(1)
    top = torch.sort(cov.flatten()[where], descending=True, stable=True).indices[:k]
    chosen = torch.zeros_like(m).flatten()
    chosen[where[top]] = True
    return chosen.view_as(m)


@register_policy_loss("erc", options=("erc_low", "erc_high"), needs=("entropies", "entropies_old"))
def erc_loss(x: TokenTerms) -> ModeOutput:
    """Entropy ratio clipping, ERC (arXiv 2512.05591; Kwai-Klear/ERC ``compute_policy_loss_grpo_erc``).

    After PPO's loss (the reference always dual-clips, ``clip_ratio_c = 3``: the ``erc`` algorithm
    sets it), the tokens outside :func:`erc_keep` keep their loss value, detached (no gradient).
    Metric ``erc_kept_frac``: the fraction of valid tokens that keep their gradient.
    """
    loss, low, high, dual = _clipped(x.ratio, x.advantages, x.eps_low, x.eps_high, x.clip_ratio_c)
    keep = _erc_choice(x.entropies, x.entropies_old, x.mask, x.options["erc_low"], x.options["erc_high"])
    loss = torch.where(keep, loss, loss.detach())
    return ModeOutput(loss, low, high, dual, {"erc_kept_frac": int(keep.sum()) / int(x.mask.sum())})


def erc_keep(
    entropies: torch.Tensor,
    entropies_old: torch.Tensor,
    mask: torch.Tensor,
    *,
    erc_low: float = 0.95,
    erc_high: float = 1.05,
) -> torch.Tensor:
    """The tokens ERC lets through, bool ``[B, T]``: valid, with
    ``erc_low < (H_new + 1e-8) / (H_old + 1e-8) < erc_high`` (the ratio computed in float64)."""
    m = _selection_inputs(mask, entropies=entropies, entropies_old=entropies_old)
    check_loss_mode_options({"erc_low": erc_low, "erc_high": erc_high})
    return _erc_choice(entropies, entropies_old, m, erc_low, erc_high)


def _erc_choice(entropies, entropies_old, m, low, high) -> torch.Tensor:
    new = entropies.detach().double() + ENTROPY_RATIO_EPS
    ratio = new / (entropies_old.detach().double() + ENTROPY_RATIO_EPS)
    return m & (ratio > low) & (ratio < high)


def _selection_inputs(mask, **tensors: torch.Tensor) -> torch.Tensor:
    """Check the named tensors: one shape, finite at the valid positions of ``mask``; return it as bool."""
    names, values = list(tensors), [_checks.tensor(n, v) for n, v in tensors.items()]
    _checks.same_shape(names, values)
    m = _checks.mask("mask", mask, values[0].shape).to(values[0].device)
    for name, value in zip(names, values):
        _checks.finite(name, value.detach(), where=m)
    return m


# ---------------------------------------------------------------------------- the loss


def _check_inputs(args: dict) -> torch.Tensor:
    """Validate :func:`policy_loss`'s arguments; return the bool mask."""
    logp_new, logp_old, advantages = args["logp_new"], args["logp_old"], args["advantages"]
    eps_low, eps_high, beta_kl, entropy_coef = args["eps_low"], args["eps_high"], args["beta_kl"], args["entropy_coef"]
    denominator, norm_len, clip_ratio_c = args["denominator"], args["norm_len"], args["clip_ratio_c"]
    names = ("logp_new", "logp_old", "advantages")
    tensors = [_checks.tensor(n, v) for n, v in zip(names, (logp_new, logp_old, advantages))]
    if logp_new.dim() != 2:
        raise ValueError(f"logp_new must have shape [B, T], got {tuple(logp_new.shape)}")
    _checks.same_shape(names, tensors)
    m = _checks.mask("mask", args["mask"], logp_new.shape).to(logp_new.device)
    _checks.no_empty_rows("mask", m)
    for n, v in zip(names, tensors):
        _checks.finite(n, v.detach(), where=m)
    _checks.choice("agg", args["agg"], AGGREGATIONS)
    _checks.choice("level", args["level"], LEVELS)
    _checks.positive("eps_low", eps_low, allow_zero=True)
    _checks.positive("eps_high", eps_high, allow_zero=True)
    if eps_low >= 1:
        raise ValueError(f"eps_low must be < 1 (the lower clip bound 1 - eps_low must stay positive), got {eps_low}")
    _checks.positive("beta_kl", beta_kl, allow_zero=True)
    _checks.positive("entropy_coef", entropy_coef, allow_zero=True)
    if denominator is not None:
        _checks.positive("denominator", denominator)
    if norm_len is not None:
        _checks.positive("norm_len", norm_len)
    if clip_ratio_c is not None:
        _checks.number("clip_ratio_c", clip_ratio_c)
        if clip_ratio_c <= 1:
            raise ValueError(f"clip_ratio_c must be > 1 (verl's dual-clip bound; e.g. 3.0), got {clip_ratio_c}")
    if beta_kl > 0 and args["logp_ref"] is None:
        raise ValueError("beta_kl > 0 needs logp_ref (log-probabilities of the reference model)")
    if entropy_coef > 0 and args["entropies"] is None:
        raise ValueError("entropy_coef > 0 needs entropies (current-policy entropies with gradient)")
    _check_method_inputs(args, m)
    return m


def _check_method_inputs(args: dict, m: torch.Tensor) -> None:
    """The checks of ``loss_mode``, its options and tensors, and the forking-token mask."""
    mode, level, rho, keep = args["loss_mode"], args["level"], args["top_entropy_quantile"], args["top_entropy_keep"]
    _checks.choice("loss_mode", mode, LOSS_MODES)
    check_loss_mode_options({k: args[k] for k in MODE_OPTIONS})
    _check_rho("top_entropy_quantile", rho)
    if level == "sequence" and (mode != "vanilla" or rho < 1 or keep is not None):
        raise ValueError(
            f"loss_mode={mode!r} and the forking-token mask act on per-token losses; level='sequence' "
            "(GRPO-S's objective) takes neither: use level='token'"
        )
    if args["clip_ratio_c"] is not None and not LOSS_MODES[mode].clipped:
        raise ValueError(f"loss_mode={mode!r} has no ratio clip (as in verl): pass clip_ratio_c=None")
    for name in LOSS_MODES[mode].needs:
        if args[name] is None:
            raise ValueError(f"loss_mode={mode!r} needs {name} ({_TENSOR_ROLES[name]})")
    for name in ("entropies", "entropies_old"):
        if args[name] is not None:
            _checks.same_shape(("logp_new", name), (args["logp_new"], _checks.tensor(name, args[name])))
            _checks.finite(name, args[name].detach(), where=m)
            if mode == "erc" and bool(((args[name].detach() < 0) & m).any()):
                raise ValueError(f"{name} must be >= 0 at valid positions (they are entropies in nats)")
    _checks.choice("top_entropy_scope", args["top_entropy_scope"], TOP_ENTROPY_SCOPES)
    source = "entropies_old" if args["top_entropy_scope"] == "mini_batch" else "entropies"
    if keep is not None:
        _checks.mask("top_entropy_keep", keep, args["logp_new"].shape)
    elif rho < 1 and args[source] is None:
        raise ValueError(
            f"top_entropy_quantile < 1 with top_entropy_scope={args['top_entropy_scope']!r} needs top_entropy_keep "
            f"(top_entropy_mask over the optimizer step's rows) or {source} ({_TENSOR_ROLES[source]}; the set "
            "is then this call's tokens)"
        )
    if args["generator"] is not None and not isinstance(args["generator"], torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(args['generator']).__name__}")


def policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "token-mean",
    level: str = "token",
    logp_ref: torch.Tensor | None = None,
    beta_kl: float = 0.0,
    entropies: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    denominator: float | None = None,
    clip_ratio_c: float | None = None,
    norm_len: int | None = None,
    loss_mode: str = "vanilla",
    entropies_old: torch.Tensor | None = None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 1.0,
    erc_low: float = 0.95,
    erc_high: float = 1.05,
    top_entropy_quantile: float = 1.0,
    top_entropy_scope: str = "mini_batch",
    top_entropy_keep: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss over ``[B, T]`` tensors; returns ``(loss, metrics)``.

    ``logp_old`` and ``advantages`` are treated as constants. With ``level="sequence"`` the
    advantage of a response is the mean of ``advantages`` over its valid tokens (GRPO-S
    broadcasts one value per response) and ``agg`` applies only to the KL and entropy terms.
    ``clip_ratio_c``: verl's dual clip (``None``: off). ``norm_len``: the constant length of
    ``agg="seq-mean-token-sum-norm"``. The entropy term is aggregated with ``agg`` (as verl; TRL
    averages it over tokens). ``entropies``: the current policy's, with gradient; ``entropies_old``:
    the behaviour policy's (detached).

    ``loss_mode``: a name of :data:`LOSS_MODES` (``"vanilla"``, ``"clip_cov"``, ``"kl_cov"``, ``"erc"``)
    with its options (``clip_cov_*``, ``kl_cov_ratio``, ``ppo_kl_coef``, ``erc_*``; verl's defaults);
    its statistics run over this call's valid tokens; ``generator`` makes Clip-Cov's draw
    reproducible. Forking tokens multiply the per-token loss by ``top_entropy_keep`` when given
    (:func:`top_entropy_mask` over the optimizer step's rows, cut to this micro-batch); else, with
    ``top_entropy_quantile < 1``, by the mask over this call's tokens of ``entropies_old``
    (``top_entropy_scope="mini_batch"``: right when the call is the whole mini-batch) or of the
    current ``entropies`` (``"micro_batch"``: TRL).

    ``metrics`` (floats): ``policy_loss``, ``clip_frac_low`` (ratio below ``1 - eps_low`` with
    negative advantage), ``clip_frac_high`` (above ``1 + eps_high`` with positive advantage),
    ``clip_frac``, ``clip_frac_dual`` (capped by the dual clip; with ``clip_ratio_c`` only),
    ``ratio_mean``, ``approx_kl`` (k3 of the new policy from the old one), ``kl_ref`` / ``entropy``
    when given, the mode's (``clip_cov_frac``, ``kl_cov_frac``, ``erc_kept_frac``) and
    ``top_entropy_kept_frac`` with the forking mask.
    """
    args = dict(locals())  # every argument, checked together
    m = _check_inputs(args)
    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    w = m.to(logp_new.dtype)
    adv = torch.where(m, advantages.detach().to(logp_new.dtype), zero)
    log_ratio = torch.where(m, logp_new - logp_old.detach(), zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()

    if level == "token":
        policy, low, high, dual, extra = _token_policy(args, m, ratio, log_ratio, adv)
        n_items = w.sum()
    else:
        policy, low, high, dual, n_items = _sequence_policy(args, w, ratio, adv)
        extra = {}
    metrics = {**_clip_metrics(policy, low, high, dual, n_items, ratio, log_ratio, w, clip_ratio_c), **extra}
    loss = policy
    for term in _regularisers(args, m, metrics):
        loss = loss + term
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def _sequence_policy(args: dict, w, ratio, adv):
    """GRPO-S's sequence-level term: ``w_i = mean_t rho[i,t]``, ``-(1/G) sum_i min(w_i A_i, clip(w_i) A_i)``;
    with the clip indicators per response and the number of responses."""
    n_tok = w.sum(-1)
    weight = (ratio * w).sum(-1) / n_tok
    seq_adv = (adv * w).sum(-1) / n_tok
    per_seq, low, high, dual = _clipped(weight, seq_adv, args["eps_low"], args["eps_high"], args["clip_ratio_c"])
    denominator = args["denominator"]
    policy = per_seq.sum() / (denominator if denominator is not None else per_seq.shape[0])
    return policy, low, high, dual, torch.tensor(float(per_seq.shape[0]))


def _token_policy(args: dict, m, ratio, log_ratio, adv):
    """The token-level policy term: the loss mode's per-token loss, times the forking mask, aggregated;
    with the clip indicators (valid tokens only) and the mode's metrics."""
    terms = TokenTerms(
        ratio=ratio,
        log_ratio=log_ratio,
        advantages=adv,
        logp_new=args["logp_new"],
        mask=m,
        eps_low=args["eps_low"],
        eps_high=args["eps_high"],
        clip_ratio_c=args["clip_ratio_c"],
        entropies=args["entropies"],
        entropies_old=args["entropies_old"],
        options={k: args[k] for k in MODE_OPTIONS},
        generator=args["generator"],
    )
    out = LOSS_MODES[args["loss_mode"]].fn(terms)
    per_token, extra = out.loss, dict(out.metrics)
    keep = _forking_keep(args, m)
    if keep is not None:
        per_token = per_token * keep.to(per_token.dtype)
        extra["top_entropy_kept_frac"] = int(keep.sum()) / int(m.sum())
    policy = aggregate(per_token, m, args["agg"], args["denominator"], args["norm_len"])
    return policy, out.clip_low & m, out.clip_high & m, out.clip_dual & m, extra


def _forking_keep(args: dict, m: torch.Tensor) -> torch.Tensor | None:
    """The forking-token mask of this call (``None``: off)."""
    if args["top_entropy_keep"] is not None:
        return _checks.mask("top_entropy_keep", args["top_entropy_keep"], m.shape).to(m.device) & m
    if args["top_entropy_quantile"] < 1:
        source = "entropies_old" if args["top_entropy_scope"] == "mini_batch" else "entropies"
        return top_entropy_mask(args[source].detach(), m, args["top_entropy_quantile"])
    return None


def _regularisers(args: dict, m: torch.Tensor, metrics: dict) -> list[torch.Tensor]:
    """The terms ``beta_kl * k3`` and ``-entropy_coef * H`` (each aggregated with ``agg``) that
    are on; the KL and entropy values go in ``metrics`` whenever they are given."""
    logp_new, agg, denominator, norm_len = args["logp_new"], args["agg"], args["denominator"], args["norm_len"]
    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    terms = []
    if args["logp_ref"] is not None:
        logp_ref = _checks.tensor("logp_ref", args["logp_ref"])
        _checks.same_shape(("logp_new", "logp_ref"), (logp_new, logp_ref))
        _checks.finite("logp_ref", logp_ref.detach(), where=m)
        diff = torch.where(m, logp_ref.detach() - logp_new, zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = aggregate(diff.exp() - diff - 1, m, agg, denominator, norm_len)
        metrics["kl_ref"] = float(kl.detach())
        if args["beta_kl"] > 0:
            terms.append(args["beta_kl"] * kl)
    if args["entropies"] is not None:
        entropies = _checks.tensor("entropies", args["entropies"])
        _checks.same_shape(("logp_new", "entropies"), (logp_new, entropies))
        _checks.finite("entropies", entropies.detach(), where=m)
        ent = aggregate(torch.where(m, entropies, zero), m, agg, denominator, norm_len)
        metrics["entropy"] = float(ent.detach())
        if args["entropy_coef"] > 0:
            terms.append(-(args["entropy_coef"] * ent))
    return terms


@torch.no_grad()
def _clip_metrics(policy, low, high, dual, n_items, ratio, log_ratio, w, clip_ratio_c) -> dict[str, float]:
    metrics = {
        "policy_loss": float(policy),
        "clip_frac_low": float(low.sum() / n_items),
        "clip_frac_high": float(high.sum() / n_items),
        "clip_frac": float((low | high).sum() / n_items),
    }
    if clip_ratio_c is not None:
        metrics["clip_frac_dual"] = float(dual.sum() / n_items)
    metrics["ratio_mean"] = float((ratio * w).sum() / w.sum())
    old_minus_new = -log_ratio
    metrics["approx_kl"] = float(((old_minus_new.exp() - old_minus_new - 1) * w).sum() / w.sum())
    return metrics


# ---------------------------------------------------------------------------- entropy-bonus schedules


def linear_entropy_coef(step: int, steps: int, entropy_coef: float, entropy_coef_final: float) -> float:
    """The entropy-bonus weight of optimizer step ``step`` (0-based) of a run of ``steps`` steps,
    linear from ``entropy_coef`` at step 0 to ``entropy_coef_final`` at the last step:
    ``coef(s) = c0 + (c1 - c0) * min(s / (steps - 1), 1)`` (``c0`` throughout a one-step run)."""
    for name, value in (("step", step), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if step < 0 or steps < 1:
        raise ValueError(f"need step >= 0 and steps >= 1, got step={step}, steps={steps}")
    _checks.positive("entropy_coef", entropy_coef, allow_zero=True)
    _checks.positive("entropy_coef_final", entropy_coef_final, allow_zero=True)
    progress = min(step / (steps - 1), 1.0) if steps > 1 else 0.0
    return entropy_coef + (entropy_coef_final - entropy_coef) * progress


def adaptive_entropy_coef(
    coef: float,
    entropy: float,
    *,
    target: float = 0.2,
    delta: float = 0.005,
    coef_min: float = 0.0,
    coef_max: float = 1.0,
) -> tuple[float, bool]:
    """Skywork-OR1's adaptive entropy controller (arXiv 2505.22312) as TRL's ``use_adaptive_entropy``.

    After an optimizer step whose token-mean entropy is ``e`` (``entropy``):
    ``coef <- min(coef + delta, coef_max)`` if ``e <= target`` else ``max(coef - delta, coef_min)``.
    Returns ``(new coef, active)`` with ``active = e <= target``: the next step's loss uses
    ``entropy_coef = new coef if active else 0`` (TRL applies no bonus before the first step's
    measurement). TRL's defaults; from 0 with entropies 0.10, 0.15, 0.30, 0.25 the coefficient goes
    0.005, 0.010, 0.005, 0.0.
    """
    for name, value in (("coef", coef), ("delta", delta), ("coef_min", coef_min), ("coef_max", coef_max)):
        _checks.positive(name, value, allow_zero=True)
    _checks.number("entropy", entropy)
    _checks.number("target", target)
    if coef_min > coef_max:
        raise ValueError(f"coef_min must be <= coef_max, got {coef_min!r} and {coef_max!r}")
    active = entropy <= target
    new = min(coef + delta, coef_max) if active else max(coef - delta, coef_min)
    return float(new), bool(active)
