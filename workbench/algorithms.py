"""The algorithm registry: a name maps to an advantage function and its loss defaults.

Adding a variant is one function and one ``register_algorithm`` line::

    register_algorithm(Algorithm("gtpo_strong", partial(advantages.gtpo, alpha2=0.3), ...))

Every advantage function is called as ``fn(rewards, entropies, mask, **kwargs)``: unlike TRL
and verl, the behaviour-policy entropies always reach it (GRPO and DAPO ignore them). With
``entropy_signal="surprisal"`` the ``entropies`` it gets are ``-logp_old`` instead.

The entropy-method family (``entropy-methods.md``) is registered beside GTPO and GRPO-S, each with
its paper's defaults; where a reading had to be chosen it is said here:

- ``dapo_forking``: DAPO trained on the forking tokens only, ``top_entropy_quantile = 0.2``
  (arXiv 2506.01939). The threshold runs over the optimizer step's mini-batch with the behaviour
  entropies (``top_entropy_scope="mini_batch"``); ``"micro_batch"`` is TRL's reading (each loss
  call, the current policy's entropies).
- ``clip_cov``: Clip-Cov (arXiv 2505.22617) with GRPO's advantages, token-mean, verl's and the
  paper's recipe's ``clip_cov_ratio = 2e-4``, bounds ``(1, 5)``, and dynamic sampling on (the
  recipe's ``filter_groups``). The recipe sets ``clip_ratio_low = clip_ratio_high = 1`` (ratio
  clipped to ``[0, 2]``); the workbench's loss needs ``eps_low < 1``, so GRPO's ``0.2 / 0.2``
  stays (``replace(eps_low=..., eps_high=1.0)`` to come closer).
- ``kl_cov``: KL-Cov with GRPO's advantages, token-mean, the paper's 7B recipe
  ``kl_cov_ratio = 0.002`` (its ``k_percent = 0.2``; 32B and verl's default: ``2e-4``),
  ``ppo_kl_coef = 1``, no dynamic sampling (as that recipe).
- ``entropy_adv``: GRPO's advantages plus the clipped entropy term of arXiv 2506.14758, with the
  workbench's ``alpha = 0.4``, ``kappa = 2`` (no official values); GRPO's loss.
- ``erc``: DAPO with entropy ratio clipping (arXiv 2512.05591), ``erc_low = 0.95``,
  ``erc_high = 1.05``, and the reference's dual clip ``clip_ratio_c = 3``.
- ``gtpo_surprisal``, ``grpo_s_surprisal``: GTPO and GRPO-S weighting by the sampled token's
  surprisal ``-logp_old`` instead of the entropy (what API-bound ports do).

On-policy (one update per batch) KL-Cov and ERC change nothing (``|logp - logp_old| = 0``, entropy
ratio 1): compare them with several mini-batches or epochs per batch, for every method.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from . import _checks
from . import advantages as adv
from .losses import (
    AGGREGATIONS,
    LEVELS,
    LOSS_MODES,
    MODE_OPTIONS,
    TOP_ENTROPY_SCOPES,
    check_loss_mode_options,
    clip_cov_tokens,
    erc_keep,
    kl_cov_tokens,
    policy_loss,
)
from .losses import top_entropy_mask as _top_entropy_mask

__all__ = ["Algorithm", "ALGORITHMS", "TokenCredit", "register_algorithm", "get_algorithm"]

#: policy_loss's defaults of the loss-mode options (verl's), read from its signature.
_MODE_DEFAULTS = {k: p.default for k, p in inspect.signature(policy_loss).parameters.items() if k in MODE_OPTIONS}


class TokenCredit(NamedTuple):
    """What an algorithm does to each token of one batch (:meth:`Algorithm.token_credit`), ``[..., n, T]``."""

    advantages: torch.Tensor  # float32, 0 at masked positions
    weights: torch.Tensor  # float64: -N dL/dlogp[i,t] (N valid tokens), 0 at masked positions
    dropped: torch.Tensor  # bool: no loss and no gradient (outside the forking mask, Clip-Cov's draw)
    frozen: torch.Tensor  # bool: held at the behaviour policy (KL-Cov's penalised tokens, ERC's detached ones)
    notes: tuple[str, ...]  # what the inputs cannot show (a loss mode that needs the current policy)


@dataclass(frozen=True)
class Algorithm:
    """One RL algorithm: how rewards become advantages, and the defaults of its loss.

    Attributes:
        name: registry name.
        advantage_fn: ``fn(rewards, entropies, mask, **kwargs) -> advantages [..., n, T]``.
        eps_low, eps_high: clip range of the ratio (clip-higher when ``eps_high > eps_low``).
        agg: loss aggregation (see :mod:`workbench.losses`).
        level: ``"token"`` or ``"sequence"`` (GRPO-S's sequence-level ratio).
        dynamic_sampling: drop groups whose rewards are all equal and sample more (DAPO).
        overlong_shaping: add DAPO's soft overlong penalty to the rewards.
        beta_kl: default weight of the KL penalty to a reference model (0: no reference).
        uses_entropy: whether the advantages depend on the entropies (or their surprisal stand-in).
        description: one line for tables and widgets.
        advantage_kwargs: keyword arguments of ``advantage_fn``.
        loss_mode: a name of :data:`workbench.losses.LOSS_MODES` (``"vanilla"``: PPO's clipped loss).
        loss_mode_kwargs: the mode's options (e.g. ``{"kl_cov_ratio": 0.002}``); the rest keep
            :func:`~workbench.losses.policy_loss`'s defaults.
        clip_ratio_c: verl's dual clip of the loss (``None``: off; ERC's reference uses 3).
        top_entropy_quantile: the fraction ``rho`` of forking tokens trained on (1: all).
        top_entropy_scope: the set the forking threshold runs over: ``"mini_batch"`` (the optimizer
            step's rows, behaviour entropies; :meth:`top_entropy_keep`) or ``"micro_batch"`` (each
            loss call, current entropies: TRL).
        entropy_signal: ``"entropy"`` or ``"surprisal"`` (``-logp_old``): what the advantages weight by.
    """

    name: str
    advantage_fn: Callable[..., torch.Tensor]
    eps_low: float = 0.2
    eps_high: float = 0.2
    agg: str = "token-mean"
    level: str = "token"
    dynamic_sampling: bool = False
    overlong_shaping: bool = False
    beta_kl: float = 0.0
    uses_entropy: bool = False
    description: str = ""
    advantage_kwargs: dict = field(default_factory=dict)
    loss_mode: str = "vanilla"
    loss_mode_kwargs: dict = field(default_factory=dict)
    clip_ratio_c: float | None = None
    top_entropy_quantile: float = 1.0
    top_entropy_scope: str = "mini_batch"
    entropy_signal: str = "entropy"

    def __post_init__(self):
        _checks.choice("agg", self.agg, AGGREGATIONS)
        _checks.choice("level", self.level, LEVELS)
        if not callable(self.advantage_fn):
            raise TypeError(f"advantage_fn of {self.name!r} must be callable")
        _checks.choice("entropy_signal", self.entropy_signal, adv.SIGNALS)
        _checks.choice("top_entropy_scope", self.top_entropy_scope, TOP_ENTROPY_SCOPES)
        _checks.choice("loss_mode", self.loss_mode, LOSS_MODES)
        accepted = LOSS_MODES[self.loss_mode].options
        for name in self.loss_mode_kwargs:
            if name not in accepted:
                raise ValueError(
                    f"loss_mode_kwargs: {name!r} is not an option of loss_mode {self.loss_mode!r}; "
                    f"it takes: {', '.join(accepted) or 'none'}"
                )
        check_loss_mode_options({**_MODE_DEFAULTS, **self.loss_mode_kwargs})
        try:  # the loss's own checks (clip_ratio_c, top_entropy_quantile, level), on a toy batch
            ones = torch.ones(1, 2)
            toy = {"entropies": ones, "entropies_old": ones, "top_entropy_keep": ones.bool()}
            tensors = {k: toy[k] for k in self.loss_tensors}
            policy_loss(-ones, -ones, ones, ones.bool(), **self.loss_kwargs(), **tensors)
        except (TypeError, ValueError) as e:
            raise ValueError(f"algorithm {self.name!r}: {e}") from None

    def advantages(self, rewards, entropies, mask, *, logp_old=None, **kwargs) -> torch.Tensor:
        """Advantages ``[..., n, T]`` with this algorithm's defaults, overridable by ``kwargs``.

        ``logp_old`` (the behaviour policy's sampled-token log-probs): needed, and used in place of
        ``entropies``, when :attr:`entropy_signal` is ``"surprisal"``; ignored otherwise."""
        if self.entropy_signal != "entropy":
            entropies = adv.shaping_signal(entropies, logp_old, mask, signal=self.entropy_signal)
        return self.advantage_fn(rewards, entropies, mask, **{**self.advantage_kwargs, **kwargs})

    def check_advantage_kwargs(self, kwargs: dict) -> None:
        """Raise ``ValueError`` naming the problem unless ``kwargs`` suit :attr:`advantage_fn`:
        every name must be one of its keyword arguments (read from its signature), and the
        values must pass its own checks (it is called once on a two-response toy group)."""
        accepted = _keyword_arguments(self.advantage_fn)
        if accepted is not None:
            for name in kwargs:
                if name not in accepted:
                    fn = getattr(inspect.unwrap(self.advantage_fn), "__name__", "advantage_fn")
                    raise ValueError(
                        f"advantage_kwargs: {name!r} is not an argument of {self.name!r}'s advantage "
                        f"function {fn}(); it takes: {', '.join(accepted) or 'none'}"
                    )
        rewards, mask = torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, 2, dtype=torch.bool)
        try:
            self.advantages(rewards, torch.full((1, 2, 2), 0.5), mask, logp_old=torch.full((1, 2, 2), -0.5), **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"advantage_kwargs: {e}") from None

    def loss_kwargs(self) -> dict:
        """Keyword arguments of :func:`workbench.losses.policy_loss` for this algorithm.

        Always ``eps_low``, ``eps_high``, ``agg``, ``level``; then, where they differ from the plain
        loss: ``loss_mode`` with all its options (defaults filled in), ``clip_ratio_c``, and
        ``top_entropy_quantile`` with ``top_entropy_scope``. The tensors the loss then needs are
        named by :attr:`loss_tensors`."""
        kwargs = {"eps_low": self.eps_low, "eps_high": self.eps_high, "agg": self.agg, "level": self.level}
        if self.loss_mode != "vanilla":
            options = {k: _MODE_DEFAULTS[k] for k in LOSS_MODES[self.loss_mode].options}
            kwargs.update(loss_mode=self.loss_mode, **{**options, **self.loss_mode_kwargs})
        if self.clip_ratio_c is not None:
            kwargs["clip_ratio_c"] = self.clip_ratio_c
        if self.top_entropy_quantile < 1:
            kwargs.update(top_entropy_quantile=self.top_entropy_quantile, top_entropy_scope=self.top_entropy_scope)
        return kwargs

    @property
    def loss_tensors(self) -> tuple[str, ...]:
        """The tensors :func:`~workbench.losses.policy_loss` needs beyond the plain loss's:
        ``"entropies"`` (current policy, this forward), ``"entropies_old"`` (behaviour policy),
        ``"top_entropy_keep"`` (:meth:`top_entropy_keep` of the optimizer step's rows, cut to each
        micro-batch; ``entropies_old`` does instead when one loss call covers the whole step)."""
        needs = list(LOSS_MODES[self.loss_mode].needs)
        if self.top_entropy_quantile < 1:
            needs.append("entropies" if self.top_entropy_scope == "micro_batch" else "top_entropy_keep")
        return tuple(dict.fromkeys(needs))

    def top_entropy_keep(self, entropies_old: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The forking-token mask of one optimizer step's rows (``top_entropy_scope="mini_batch"``):
        :func:`~workbench.losses.top_entropy_mask` of the behaviour entropies; ``None`` when off or
        when each loss call computes its own (``"micro_batch"``)."""
        if self.top_entropy_quantile == 1 or self.top_entropy_scope != "mini_batch":
            return None
        return _top_entropy_mask(entropies_old, mask, self.top_entropy_quantile)

    def token_credit(
        self,
        rewards,
        entropies,
        mask,
        logp_old,
        *,
        entropies_new=None,
        logp_new=None,
        seed: int = 0,
        norm_len: int | None = None,
        **kwargs,
    ) -> TokenCredit:
        """Each token's credit in one update on a batch: :meth:`advantages` (``kwargs`` reach them),
        and the weight of the token in the gradient of :func:`~workbench.losses.policy_loss` with
        this algorithm's :meth:`loss_kwargs` (autograd), ``w[i,t] = -N dL/dlogp[i,t]``: the advantage
        itself under token-mean with every token trained, 0 for a dropped or detached token.

        ``rewards [..., n]``, ``entropies``/``mask``/``logp_old [..., n, T]`` (behaviour policy).
        ``logp_new``, ``entropies_new``: the current policy's, when known; by default the behaviour
        policy's (ratio 1), where KL-Cov's penalty is 0 and ERC clips nothing (said in ``notes``).
        The batch statistics (forking quantile, covariances) run over all the given tokens, as over
        one optimizer step's rows; ``seed`` seeds Clip-Cov's draw. ``dropped``: outside the forking
        mask (:meth:`top_entropy_keep`) or drawn by :func:`~workbench.losses.clip_cov_tokens`;
        ``frozen``: :func:`~workbench.losses.kl_cov_tokens` (``ppo_kl_coef * |logp - logp_old|``
        holds them at the behaviour log-prob) or outside :func:`~workbench.losses.erc_keep`.
        """
        h, m, lp_old = (torch.as_tensor(x) for x in (entropies, mask, logp_old))
        m = m.bool()
        advantages = self.advantages(torch.as_tensor(rewards), h.float(), m, logp_old=lp_old.float(), **kwargs)
        shape, T = m.shape, m.shape[-1]
        flat = {"h": h.reshape(-1, T).double(), "m": m.reshape(-1, T), "old": lp_old.reshape(-1, T).double()}
        flat["h_new"] = flat["h"] if entropies_new is None else torch.as_tensor(entropies_new).reshape(-1, T).double()
        flat["new"] = flat["old"] if logp_new is None else torch.as_tensor(logp_new).reshape(-1, T).double()
        adv = advantages.reshape(-1, T).double()
        dropped, frozen = self._token_selection(flat, adv, seed)
        current = flat["new"].clone().requires_grad_(True)
        tensors = {"entropies": flat["h_new"], "entropies_old": flat["h"]}
        tensors["top_entropy_keep"] = self.top_entropy_keep(flat["h"], flat["m"])
        needed = {k: tensors[k] for k in self.loss_tensors}
        loss, _ = policy_loss(
            current,
            flat["old"],
            adv,
            flat["m"],
            **self.loss_kwargs(),
            **needed,
            norm_len=norm_len,
            generator=torch.Generator().manual_seed(seed),
        )
        loss.backward()
        weights = torch.where(flat["m"], -current.grad * flat["m"].sum(), torch.zeros((), dtype=torch.float64)) + 0.0
        notes = self._behaviour_notes(logp_new is None, entropies_new is None)
        return TokenCredit(advantages, weights.view(shape), dropped.view(shape), frozen.view(shape), notes)

    def _token_selection(self, flat: dict, adv: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dropped, frozen)`` of :meth:`token_credit`, from the selection functions of the losses."""
        m, options = flat["m"], self.loss_kwargs()
        keep = self.top_entropy_keep(flat["h"], m)
        if keep is None and self.top_entropy_quantile < 1:  # micro_batch scope: the current entropies
            keep = _top_entropy_mask(flat["h_new"], m, self.top_entropy_quantile)
        dropped = m & ~keep if keep is not None else torch.zeros_like(m)
        frozen = torch.zeros_like(m)
        mode = {k: options[k] for k in LOSS_MODES[self.loss_mode].options}
        if self.loss_mode == "clip_cov":
            gen = torch.Generator().manual_seed(seed)  # the same draw as policy_loss's
            eps = {"eps_low": self.eps_low, "eps_high": self.eps_high}
            dropped |= clip_cov_tokens(flat["new"], flat["old"], adv, m, **eps, **mode, generator=gen)
        elif self.loss_mode == "kl_cov":
            frozen |= kl_cov_tokens(adv, flat["new"], m, kl_cov_ratio=mode["kl_cov_ratio"])
        elif self.loss_mode == "erc":
            frozen |= m & ~erc_keep(flat["h_new"], flat["h"], m, **mode)
        return dropped, frozen & ~dropped

    def _behaviour_notes(self, old_logp: bool, old_entropies: bool) -> tuple[str, ...]:
        if self.loss_mode == "kl_cov" and old_logp:
            return ("at the behaviour policy |logp - logp_old| = 0: KL-Cov's penalty is 0 here",)
        if self.loss_mode == "erc" and old_entropies:
            return ("at the behaviour policy the entropy ratio is 1: ERC clips nothing here",)
        if self.loss_mode == "clip_cov" and old_logp:
            return ("at ratio 1 PPO clips nothing: every token with lb < cov < ub is a Clip-Cov candidate",)
        return ()

    def replace(self, **changes) -> Algorithm:
        return dataclasses.replace(self, **changes)


def _ignore_entropies(fn):
    @functools.wraps(fn)  # its signature (inspect.signature follows __wrapped__) is fn's keywords
    def advantage_fn(rewards, entropies, mask, **kwargs):
        return fn(rewards, mask, **kwargs)

    return advantage_fn


_DATA_ARGUMENTS = ("rewards", "entropies", "mask")


def _keyword_arguments(fn) -> list[str] | None:
    """The keyword arguments ``fn`` takes besides the data (``None``: any, it has ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [
        p.name for p in params if p.name not in _DATA_ARGUMENTS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algorithm: Algorithm, *, overwrite: bool = False) -> Algorithm:
    """Add ``algorithm`` to :data:`ALGORITHMS` under its name."""
    if algorithm.name in ALGORITHMS and not overwrite:
        raise ValueError(f"an algorithm named {algorithm.name!r} is already registered (pass overwrite=True)")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm ``name``; a ``ValueError`` lists the known names otherwise."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


_DAPO_LOSS = dict(eps_low=0.2, eps_high=0.28, agg="token-mean", dynamic_sampling=True, overlong_shaping=True)

register_algorithm(
    Algorithm(
        "grpo",
        _ignore_entropies(adv.grpo),
        agg="seq-mean-token-mean",
        description="GRPO: group z-scored outcome reward, same for every token",
    )
)
register_algorithm(
    Algorithm(
        "dr_grpo",
        _ignore_entropies(adv.grpo),
        agg="seq-mean-token-sum-norm",
        advantage_kwargs={"scale": "none"},
        description="Dr. GRPO: no std division, constant length normaliser",
    )
)
register_algorithm(
    Algorithm(
        "dapo",
        _ignore_entropies(adv.dapo),
        **_DAPO_LOSS,
        description="DAPO: GRPO advantage, clip-higher, token-mean, dynamic sampling, overlong shaping",
    )
)
register_algorithm(
    Algorithm(
        "gtpo",
        adv.gtpo,
        uses_entropy=True,
        **_DAPO_LOSS,
        description="GTPO: token-level entropy-weighted rewards, token advantages (joint z-score)",
    )
)
register_algorithm(
    Algorithm(
        "gtpo_per_polarity",
        adv.gtpo,
        uses_entropy=True,
        advantage_kwargs={"normalize": "per_polarity"},
        **_DAPO_LOSS,
        description="GTPO with O+ and O- normalised separately (study variant)",
    )
)
register_algorithm(
    Algorithm(
        "gtpo_per_polarity_batch",
        adv.gtpo,
        uses_entropy=True,
        advantage_kwargs={"normalize": "per_polarity_batch"},
        **_DAPO_LOSS,
        description="GTPO with O+ and O- normalised separately over the whole batch (study variant)",
    )
)
register_algorithm(
    Algorithm(
        "grpo_s",
        adv.grpo_s,
        uses_entropy=True,
        level="sequence",
        **_DAPO_LOSS,
        description="GRPO-S: sequence-level entropy-weighted rewards, sequence-level ratio",
    )
)
register_algorithm(
    Algorithm(
        "grpo_s_token",
        adv.grpo_s,
        uses_entropy=True,
        **_DAPO_LOSS,
        description="GRPO-S advantages with the token-level loss (comparison variant)",
    )
)


# ---------------------------------------------------------------------------- the entropy-method family
# (readings: see the module docstring)

register_algorithm(
    Algorithm(
        "dapo_forking",
        _ignore_entropies(adv.dapo),
        top_entropy_quantile=0.2,
        **_DAPO_LOSS,
        description="DAPO on the top-20% entropy (forking) tokens only (arXiv 2506.01939)",
    )
)
register_algorithm(
    Algorithm(
        "clip_cov",
        _ignore_entropies(adv.grpo),
        dynamic_sampling=True,
        loss_mode="clip_cov",
        loss_mode_kwargs={"clip_cov_ratio": 2e-4, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0},
        description="Clip-Cov: GRPO, a few high-covariance tokens detached (arXiv 2505.22617)",
    )
)
register_algorithm(
    Algorithm(
        "kl_cov",
        _ignore_entropies(adv.grpo),
        loss_mode="kl_cov",
        loss_mode_kwargs={"kl_cov_ratio": 0.002, "ppo_kl_coef": 1.0},
        description="KL-Cov: GRPO, |logp - logp_old| on the highest-covariance tokens (arXiv 2505.22617)",
    )
)
register_algorithm(
    Algorithm(
        "entropy_adv",
        adv.grpo_entropy_advantage,
        agg="seq-mean-token-mean",
        uses_entropy=True,
        description="GRPO + min(alpha H, |A| / kappa) on every token (arXiv 2506.14758)",
    )
)
register_algorithm(
    Algorithm(
        "erc",
        _ignore_entropies(adv.dapo),
        **_DAPO_LOSS,
        loss_mode="erc",
        loss_mode_kwargs={"erc_low": 0.95, "erc_high": 1.05},
        clip_ratio_c=3.0,
        description="DAPO + entropy ratio clipping: gradient only where H_new / H_old is near 1 (arXiv 2512.05591)",
    )
)
register_algorithm(
    Algorithm(
        "gtpo_surprisal",
        adv.gtpo,
        uses_entropy=True,
        entropy_signal="surprisal",
        **_DAPO_LOSS,
        description="GTPO weighting by the sampled token's surprisal -logp_old instead of the entropy",
    )
)
register_algorithm(
    Algorithm(
        "grpo_s_surprisal",
        adv.grpo_s,
        uses_entropy=True,
        level="sequence",
        entropy_signal="surprisal",
        **_DAPO_LOSS,
        description="GRPO-S weighting by the mean surprisal -logp_old instead of the mean entropy",
    )
)
