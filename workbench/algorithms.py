"""The algorithm registry: a name maps to an advantage function and its loss defaults.

Adding a variant is one function and one ``register_algorithm`` line::

    register_algorithm(Algorithm("gtpo_strong", partial(advantages.gtpo, alpha2=0.3), ...))

Every advantage function is called as ``fn(rewards, entropies, mask, **kwargs)``: unlike TRL
and verl, the behaviour-policy entropies always reach it (GRPO and DAPO ignore them).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import _checks
from . import advantages as adv
from .losses import AGGREGATIONS, LEVELS

__all__ = ["Algorithm", "ALGORITHMS", "register_algorithm", "get_algorithm"]


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
        uses_entropy: whether the advantages depend on the entropies.
        description: one line for tables and widgets.
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

    def __post_init__(self):
        _checks.choice("agg", self.agg, AGGREGATIONS)
        _checks.choice("level", self.level, LEVELS)
        if not callable(self.advantage_fn):
            raise TypeError(f"advantage_fn of {self.name!r} must be callable")

    def advantages(self, rewards, entropies, mask, **kwargs) -> torch.Tensor:
        """Advantages ``[..., n, T]`` with this algorithm's defaults, overridable by ``kwargs``."""
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
            self.advantages(rewards, torch.full((1, 2, 2), 0.5), mask, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"advantage_kwargs: {e}") from None

    def loss_kwargs(self) -> dict:
        """Keyword arguments of :func:`workbench.losses.policy_loss` for this algorithm."""
        return {"eps_low": self.eps_low, "eps_high": self.eps_high, "agg": self.agg, "level": self.level}

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
