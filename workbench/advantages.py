"""Rewards to advantages: GRPO, DAPO, GTPO and GRPO-S (arXiv 2508.04349).

All functions take a batch of groups and never mix groups:

- ``rewards``   ``[..., n]``      outcome reward of each of the ``n`` responses of a group;
- ``entropies`` ``[..., n, T]``   behaviour-policy entropy of each response token (nats),
  used as a weight only (detached);
- ``mask``      ``[..., n, T]``   bool or 0/1, true where response ``i`` has a token at ``t``.

They return advantages ``[..., n, T]`` in float32, exactly 0 at masked positions. Shaped
rewards and their statistics are computed in float64 (see the spec's note on precision).

Decisions where the spec is silent (also in README):

- A group of one response, an empty group or a response with no valid token is an error:
  a group statistic needs at least two samples, and every sampled response has at least
  one token (its end-of-sequence token).
- GTPO and GRPO-S base rewards for failed responses are ``alpha1 * (r_j - 1)`` (resp.
  ``beta1 * (r_j - 1)``). With the binary task rewards (``r_j = 0``) this is exactly the
  spec's ``-alpha1``; with extra reward terms (overlong or GROP penalties) it lets them act
  on failed responses too instead of being silently dropped.
- ``zero_variance="skip"`` skips groups whose rewards are all equal (the same test as
  GRPO's zero advantage and DAPO's dynamic sampling): advantage 0, and no part in any
  statistic (which matters for ``normalize="per_polarity_batch"``).

Beside them (``entropy-methods.md``): :func:`entropy_advantage` adds the clipped entropy term of
arXiv 2506.14758 to any advantages (:func:`grpo_entropy_advantage` on GRPO's), and
:func:`shaping_signal` gives the per-token signal an entropy-shaped method weights by: the
entropy, or the sampled token's surprisal ``-logp_old`` (what API-bound GTPO ports use).
"""

from __future__ import annotations

import torch

from . import _checks

EPS = 1e-6
INV_ENTROPY_EPS = 1e-8
NORMALIZE = ("joint", "per_polarity", "per_polarity_batch")
ZERO_VARIANCE = ("skip", "shape")
SCALES = ("group", "batch", "none")
SIGNALS = ("entropy", "surprisal")

__all__ = [
    "grpo",
    "dapo",
    "gtpo",
    "grpo_s",
    "shaped_rewards_gtpo",
    "shaped_rewards_grpo_s",
    "sequence_entropy",
    "entropy_advantage",
    "grpo_entropy_advantage",
    "shaping_signal",
    "SIGNALS",
]


# ---------------------------------------------------------------------------- checks


def _inputs(rewards, mask, entropies=None):
    """Validate and flatten to ``[G, n]`` rewards and ``[G, n, T]`` mask/entropies.

    Returns float64 rewards, bool mask, float64 entropies (0 at masked positions) or None,
    and the leading batch shape.
    """
    rewards = _checks.tensor("rewards", rewards, min_dim=1)
    if rewards.dtype == torch.bool or rewards.is_complex():
        raise TypeError(f"rewards must be a real tensor, got dtype {rewards.dtype}")
    mask = _checks.tensor("mask", mask, min_dim=2)
    if mask.dim() != rewards.dim() + 1 or tuple(mask.shape[:-1]) != tuple(rewards.shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, expected rewards.shape + (T,) = {tuple(rewards.shape)} + (T,)"
        )
    mask = _checks.mask("mask", mask, mask.shape)
    n = rewards.shape[-1]
    if n == 0:
        raise ValueError("rewards has an empty group (n = 0 responses)")
    if n == 1:
        raise ValueError("rewards has groups of one response (n = 1): a group needs at least 2")
    _checks.finite("rewards", rewards)
    _checks.no_empty_rows("mask", mask)
    batch_shape = tuple(rewards.shape[:-1])
    r = rewards.reshape(-1, n).double()
    m = mask.reshape(-1, n, mask.shape[-1])
    h = None
    if entropies is not None:
        entropies = _checks.tensor("entropies", entropies)
        if tuple(entropies.shape) != tuple(mask.shape):
            raise ValueError(f"entropies has shape {tuple(entropies.shape)}, but mask has shape {tuple(mask.shape)}")
        if not entropies.is_floating_point():
            raise TypeError(f"entropies must be a floating tensor, got dtype {entropies.dtype}")
        ent = entropies.detach().reshape(m.shape)
        _checks.finite("entropies", ent, where=m)
        if bool(((ent < 0) & m).any()):
            raise ValueError("entropies must be >= 0 at valid positions (they are entropies in nats)")
        h = torch.where(m, ent.double(), torch.zeros((), dtype=torch.float64, device=ent.device))
    return r, m, h, batch_shape


def _coefficients(**named):
    for name, value in named.items():
        _checks.number(name, value)
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


# ---------------------------------------------------------------------------- statistics


def _zscore(values: torch.Tensor, sets: torch.Tensor, eps: float, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` where mean and unbiased std run over ``sets``.

    ``values`` and ``sets`` are ``[G, ...]``; the statistics are per group (dim 0 kept),
    over all elements of the group where ``sets`` is true (``dims``: over these dimensions
    instead, e.g. all of them for statistics over the whole batch). A set of one element has
    std 0; where std is 0 the result is ``x - mean``. Positions outside ``sets`` get 0.

    Overflow-safe: the values are divided by their largest magnitude ``s`` in the set first and
    ``eps`` by ``s`` too (the same formula), so rewards up to float64's range give finite
    advantages (squaring 1e160 directly overflows; ``0 * inf`` at masked positions made NaN).
    """
    dims = tuple(range(1, values.dim())) if dims is None else dims
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    inside = torch.where(sets, values, zero)
    scale = inside.abs().amax(dims, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    x = inside / scale
    count = sets.to(values.dtype).sum(dims, keepdim=True)
    mean = x.sum(dims, keepdim=True) / count.clamp(min=1)
    centred = torch.where(sets, x - mean, zero)
    std = ((centred**2).sum(dims, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    z = torch.where(std > 0, centred / (std + eps / scale), centred * scale)
    return torch.where(sets, z, zero)


def _normalize(shaped: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor, how: str, eps: float):
    """Turn shaped rewards into advantages (the spec's "Advantage normalisation"): one z-score
    per group (``joint``), one per group and polarity (``per_polarity``), or one per polarity
    over every group of the batch (``per_polarity_batch``). ``valid`` holds the members that
    count (a skipped zero-variance group has none, so it gets 0 and leaves the statistics alone)."""
    if how == "joint":
        return _zscore(shaped, valid, eps)
    dims = tuple(range(shaped.dim())) if how == "per_polarity_batch" else None
    return _zscore(shaped, valid & positive, eps, dims) + _zscore(shaped, valid & ~positive, eps, dims)


def _zero_variance_groups(r: torch.Tensor) -> torch.Tensor:
    """``[G]`` bool: groups whose rewards are all equal (no correctness signal)."""
    return (r.max(-1).values - r.min(-1).values) == 0


def _skipped_groups(r: torch.Tensor, zero_variance: str) -> torch.Tensor:
    """``[G]`` bool: the groups that get advantage 0 and stay out of every statistic."""
    skip = _zero_variance_groups(r)
    return skip if zero_variance == "skip" else torch.zeros_like(skip)


def _entropy_weights(values: torch.Tensor, members: torch.Tensor, dim: int) -> torch.Tensor:
    """``values / sum(values over members)`` along ``dim``; uniform ``1/count`` if the sum is 0.

    Returns 0 outside ``members``.
    """
    v = torch.where(members, values, torch.zeros((), dtype=values.dtype, device=values.device))
    total = v.sum(dim, keepdim=True)
    count = members.to(values.dtype).sum(dim, keepdim=True)
    uniform = members.to(values.dtype) / count.clamp(min=1)
    return torch.where(total > 0, v / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def _finish(adv: torch.Tensor, m: torch.Tensor, batch_shape) -> torch.Tensor:
    adv = torch.where(m, adv, torch.zeros((), dtype=adv.dtype, device=adv.device))
    return adv.to(torch.float32).reshape(*batch_shape, *m.shape[1:])


# ---------------------------------------------------------------------------- GRPO / DAPO


def grpo(rewards, mask, *, scale: str = "group", eps: float = EPS) -> torch.Tensor:
    """GRPO: ``A[i,t] = (r_i - mean_k r_k) / (std_k r_k + eps)`` for every valid token.

    ``std`` is the unbiased sample std (as ``torch.std``, like TRL and verl).
    ``scale``: ``"group"`` (default) divides by the group std, ``"batch"`` by the std of all
    rewards in the batch, ``"none"`` does not divide (Dr. GRPO).

    ``eps``: ``1e-6`` as in the spec and verl; TRL's ``GRPOTrainer`` adds ``1e-4`` to the std
    (pass ``eps=1e-4`` to reproduce its numbers). The two differ only where the group std is
    small: with binary rewards and ``n = 8``, one success gives ``std = 0.354`` and advantages
    that differ by about 0.03% of their size.
    """
    _checks.choice("scale", scale, SCALES)
    _checks.positive("eps", eps, allow_zero=True)
    r, m, _, batch_shape = _inputs(rewards, mask)
    everyone = torch.ones_like(r, dtype=torch.bool)
    if scale == "group":
        adv = _zscore(r, everyone, eps)
    elif scale == "batch":  # centred per group, divided by the std of all rewards of the batch
        centred = r - r.mean(-1, keepdim=True)
        adv = centred / (_std(r, (0, 1)) + eps) if r.numel() > 1 else centred
    else:
        adv = r - r.mean(-1, keepdim=True)
    return _finish(adv[..., None].expand(m.shape), m, batch_shape)


def _std(values: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Unbiased std over ``dims``, overflow-safe (scaled by the largest magnitude first)."""
    scale = values.abs().amax(dims, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (values / scale).std(dims, keepdim=True) * scale


def dapo(rewards, mask, *, scale: str = "group", eps: float = EPS) -> torch.Tensor:
    """DAPO: the same advantage as GRPO (its differences are in the loss and the sampling)."""
    return grpo(rewards, mask, scale=scale, eps=eps)


# ---------------------------------------------------------------------------- GTPO


def shaped_rewards_gtpo(
    rewards,
    entropies,
    mask,
    *,
    alpha1: float = 1.0,
    alpha2: float = 0.1,
    threshold: float = 0.5,
) -> torch.Tensor:
    """GTPO token-level entropy-weighted rewards (Eq. 3 and Eq. 5), ``[..., n, T]`` float64.

    Per position ``t``, among the responses still alive at ``t`` (``d_t`` successful,
    ``h_t`` failed):

    - successful: ``R+[i,t] = alpha1 * r_i + alpha2 * (H[i,t] / sum_{k in O+} H[k,t]) * d_t``
    - failed (inverse entropy): ``R-[j,t] = alpha1 * (r_j - 1)
      - alpha2 * ((1/H[j,t]) / sum_{k in O-} (1/H[k,t])) * h_t``

    ``1/H`` is ``1/(H + 1e-8)``; if all alive successful entropies at ``t`` are 0 the weight
    is uniform. 0 at masked positions.
    """
    _coefficients(alpha1=alpha1, alpha2=alpha2)
    _checks.number("threshold", threshold)
    r, m, h, batch_shape = _inputs(rewards, mask, entropies)
    return _gtpo_shaped(r, m, h, alpha1, alpha2, threshold).reshape(*batch_shape, *m.shape[1:])


def _gtpo_shaped(r, m, h, alpha1, alpha2, threshold):
    positive = (r > threshold)[..., None]  # [G, n, 1]
    pos_alive = m & positive
    neg_alive = m & ~positive
    d = pos_alive.to(h.dtype).sum(1, keepdim=True)  # [G, 1, T]
    k = neg_alive.to(h.dtype).sum(1, keepdim=True)
    w_pos = _entropy_weights(h, pos_alive, dim=1)
    w_neg = _entropy_weights(1.0 / (h + INV_ENTROPY_EPS), neg_alive, dim=1)
    base = alpha1 * torch.where(positive, r[..., None], r[..., None] - 1.0)
    bonus = torch.where(positive, alpha2 * w_pos * d, -alpha2 * w_neg * k)
    shaped = base + bonus
    return torch.where(m, shaped, torch.zeros((), dtype=shaped.dtype, device=shaped.device))


def gtpo(
    rewards,
    entropies,
    mask,
    *,
    alpha1: float = 1.0,
    alpha2: float = 0.1,
    threshold: float = 0.5,
    normalize: str = "joint",
    zero_variance: str = "skip",
    eps: float = EPS,
) -> torch.Tensor:
    """GTPO token-specific advantages (Eq. 6) from the shaped rewards of :func:`shaped_rewards_gtpo`.

    Eq. 6 subtracts a mean and divides by a std; which set of shaped rewards they run over is
    read in three ways, all offered:

    - ``normalize="joint"`` (default, the workbench's reading): over all valid tokens of the
      group, ``O+`` and ``O-`` together. Correct tokens stay positive and wrong ones negative
      (GRPO's signal), reshaped within each side by entropy.
    - ``normalize="per_polarity"``: per group, over the valid tokens of ``O+`` for ``O+`` and of
      ``O-`` for ``O-`` (the reading of one public implementation, textpolicy's, and of the
      others with ``norm_scope="group"``). Each side has mean 0: the entropy signal remains,
      the correctness signal does not.
    - ``normalize="per_polarity_batch"``: per polarity over every group of the batch: all valid
      ``O+`` tokens of the batch for ``O+``, all ``O-`` tokens for ``O-`` (the reading of two of
      the three public implementations, ``norm_scope="batch"``). The advantages then depend on
      the other groups of the batch (several processes need ``rollout="replicated"``).

    Groups whose rewards are all equal get 0 with ``zero_variance="skip"`` (default) and are
    left out of the statistics (with ``per_polarity_batch`` they do not shift the batch's mean
    and std: the same advantages as when dynamic sampling drops them); ``"shape"`` shapes them
    and counts them (study only).
    """
    _checks.choice("normalize", normalize, NORMALIZE)
    _checks.choice("zero_variance", zero_variance, ZERO_VARIANCE)
    _checks.positive("eps", eps, allow_zero=True)
    _coefficients(alpha1=alpha1, alpha2=alpha2)
    _checks.number("threshold", threshold)
    r, m, h, batch_shape = _inputs(rewards, mask, entropies)
    shaped = _gtpo_shaped(r, m, h, alpha1, alpha2, threshold)
    positive = (r > threshold)[..., None].expand(m.shape)
    counted = m & ~_skipped_groups(r, zero_variance)[:, None, None]
    return _finish(_normalize(shaped, counted, positive, normalize, eps), m, batch_shape)


# ---------------------------------------------------------------------------- GRPO-S


def sequence_entropy(entropies, mask) -> torch.Tensor:
    """Mean token entropy of each response, ``Hbar_i = (1/|o_i|) sum_t H[i,t]``: ``[..., n]``."""
    entropies = _checks.tensor("entropies", entropies, min_dim=1)
    m = _checks.mask("mask", mask, entropies.shape)
    _checks.no_empty_rows("mask", m)
    _checks.finite("entropies", entropies, where=m)
    h = torch.where(m, entropies.detach().double(), torch.zeros((), dtype=torch.float64))
    return (h.sum(-1) / m.sum(-1)).to(torch.float32)


def _grpo_s_shaped(r, m, h, beta1, beta2, threshold):
    hbar = h.sum(-1) / m.sum(-1)  # [G, n]
    positive = r > threshold
    w_pos = _entropy_weights(hbar, positive, dim=1)
    w_neg = _entropy_weights(1.0 / (hbar + INV_ENTROPY_EPS), ~positive, dim=1)
    n_pos = positive.to(hbar.dtype).sum(1, keepdim=True)
    n_neg = (~positive).to(hbar.dtype).sum(1, keepdim=True)
    base = beta1 * torch.where(positive, r, r - 1.0)
    return base + torch.where(positive, beta2 * w_pos * n_pos, -beta2 * w_neg * n_neg)


def shaped_rewards_grpo_s(
    rewards,
    entropies,
    mask,
    *,
    beta1: float = 1.0,
    beta2: float = 0.1,
    threshold: float = 0.5,
) -> torch.Tensor:
    """GRPO-S sequence-level entropy-weighted rewards, ``[..., n]`` float64.

    With ``Hbar_i`` the mean token entropy of response ``i``:
    ``R+_i = beta1 * r_i + beta2 * (Hbar_i / sum_{k in O+} Hbar_k) * |O+|`` and
    ``R-_j = beta1 * (r_j - 1) - beta2 * ((1/Hbar_j) / sum_{k in O-} (1/Hbar_k)) * |O-|``.
    """
    _coefficients(beta1=beta1, beta2=beta2)
    _checks.number("threshold", threshold)
    r, m, h, batch_shape = _inputs(rewards, mask, entropies)
    return _grpo_s_shaped(r, m, h, beta1, beta2, threshold).reshape(*batch_shape, r.shape[-1])


def grpo_s(
    rewards,
    entropies,
    mask,
    *,
    beta1: float = 1.0,
    beta2: float = 0.1,
    threshold: float = 0.5,
    normalize: str = "joint",
    zero_variance: str = "skip",
    eps: float = EPS,
) -> torch.Tensor:
    """GRPO-S advantages: sequence advantages of the shaped rewards, broadcast to tokens.

    ``normalize="joint"`` (default, as every public implementation does for GRPO-S): z-score
    over the group's ``n`` shaped rewards; ``"per_polarity"``: over ``O+`` and ``O-`` of the
    group separately; ``"per_polarity_batch"``: over all ``O+`` (resp. ``O-``) responses of the
    batch. Constant over each response's valid tokens. ``zero_variance`` as in :func:`gtpo`.
    """
    _checks.choice("normalize", normalize, NORMALIZE)
    _checks.choice("zero_variance", zero_variance, ZERO_VARIANCE)
    _checks.positive("eps", eps, allow_zero=True)
    _coefficients(beta1=beta1, beta2=beta2)
    _checks.number("threshold", threshold)
    r, m, h, batch_shape = _inputs(rewards, mask, entropies)
    shaped = _grpo_s_shaped(r, m, h, beta1, beta2, threshold)
    counted = ~_skipped_groups(r, zero_variance)[:, None].expand(shaped.shape)
    adv = _normalize(shaped, counted, r > threshold, normalize, eps)
    return _finish(adv[..., None].expand(m.shape), m, batch_shape)


# ---------------------------------------------------------------------------- entropy advantage


def entropy_advantage(advantages, entropies, mask, *, alpha: float = 0.4, kappa: float = 2.0) -> torch.Tensor:
    """Entropy-based advantage ("Reasoning with Exploration: An Entropy Perspective", arXiv 2506.14758):

    ``A'[i,t] = A[i,t] + min(alpha * H[i,t], |A[i,t]| / kappa)`` at valid tokens, 0 elsewhere, with
    ``H`` detached, on top of any base advantage (GRPO's in the paper). With ``kappa > 1`` the term
    (``>= 0``) is smaller than ``|A|``: it never flips the sign of ``A``, and ``A = 0`` stays 0.
    ``alpha = 0.4``, ``kappa = 2`` are the workbench's choice (no official code or stored source gives
    the paper's). ``advantages``, ``entropies`` and ``mask`` share one shape; float32 out (float64 inside).
    """
    advantages = _checks.tensor("advantages", advantages, min_dim=1)
    m = _checks.mask("mask", mask, advantages.shape).to(advantages.device)
    entropies = _checks.tensor("entropies", entropies)
    _checks.same_shape(("advantages", "entropies"), (advantages, entropies))
    _checks.finite("advantages", advantages.detach(), where=m)
    _checks.finite("entropies", entropies.detach(), where=m)
    if bool(((entropies.detach() < 0) & m).any()):
        raise ValueError("entropies must be >= 0 at valid positions (they are entropies in nats)")
    _coefficients(alpha=alpha)
    _checks.number("kappa", kappa)
    if kappa <= 1:
        raise ValueError(f"kappa must be > 1 (the clip |A| / kappa keeps the sign of A), got {kappa!r}")
    zero = torch.zeros((), dtype=torch.float64, device=advantages.device)
    a = torch.where(m, advantages.detach().double(), zero)
    h = torch.where(m, entropies.detach().double(), zero)
    shaped = a + torch.minimum(alpha * h, a.abs() / kappa)
    return torch.where(m, shaped, zero).to(torch.float32)


def grpo_entropy_advantage(
    rewards,
    entropies,
    mask,
    *,
    alpha: float = 0.4,
    kappa: float = 2.0,
    scale: str = "group",
    eps: float = EPS,
) -> torch.Tensor:
    """GRPO's advantages (:func:`grpo`) with :func:`entropy_advantage` on top: the ``entropy_adv``
    algorithm. A group whose rewards are all equal keeps advantage 0."""
    return entropy_advantage(grpo(rewards, mask, scale=scale, eps=eps), entropies, mask, alpha=alpha, kappa=kappa)


# ---------------------------------------------------------------------------- surprisal


def shaping_signal(entropies, logp_old, mask, *, signal: str = "entropy") -> torch.Tensor:
    """The per-token signal an entropy-shaped advantage weights by (``Algorithm.entropy_signal``).

    ``"entropy"``: ``entropies`` as given (the behaviour policy's full-distribution entropy);
    ``"surprisal"``: ``-logp_old[i,t]``, the sampled token's surprisal under the behaviour policy,
    what GTPO ports for inference APIs returning only sampled log-probs use (teilomillet/retrain,
    textpolicy's Tinker port); detached, float32, 0 at masked positions and clamped at 0 (a
    log-prob rounded just above 0). Either may be ``None`` when the signal does not need it.
    """
    _checks.choice("signal", signal, SIGNALS)
    if signal == "entropy":
        if entropies is None:
            raise ValueError("signal='entropy' needs entropies (behaviour-policy entropies)")
        return entropies
    if logp_old is None:
        raise ValueError("signal='surprisal' needs logp_old (the behaviour policy's sampled-token log-probs)")
    logp_old = _checks.tensor("logp_old", logp_old, min_dim=1)
    if not logp_old.is_floating_point():
        raise TypeError(f"logp_old must be a floating tensor, got dtype {logp_old.dtype}")
    m = _checks.mask("mask", mask, logp_old.shape).to(logp_old.device)
    _checks.finite("logp_old", logp_old.detach(), where=m)
    zero = torch.zeros((), dtype=torch.float32, device=logp_old.device)
    return torch.where(m, (-logp_old.detach().float()).clamp(min=0), zero)
