"""The workbench's methods in verl (verl 0.9.x; tested with 0.9.1): advantage estimators, and
the configuration of verl's own loss modes.

    from workbench.integrations.verl import register
    register()          # verl's registry gets "gtpo", "grpo_s", "entropy_adv", "gtpo_surprisal",
                        # "grpo_s_surprisal"; entropies and log-probs are routed (below)

then run verl's trainer with ``algorithm.adv_estimator=gtpo`` (or any of them);
:func:`verl_overrides` gives the whole verl configuration of a workbench algorithm (estimator,
clip range, aggregation, dynamic sampling, loss mode), Clip-Cov and KL-Cov included: those are
verl's native ``actor.policy_loss.loss_mode="clip_cov"`` / ``"kl_cov"`` with GRPO's estimator.
verl runs its trainer inside a Ray actor (``TaskRunner``), not in the process that calls
``main``, so :func:`register` must happen *there*: set
``VERL_USE_EXTERNAL_MODULES=workbench.integrations.verl_plugin`` in the environment of every Ray
process (verl imports the listed modules on ``import verl``; ``data/verl/gtpo.yaml`` sets it
through ``ray_kwargs.ray_init.runtime_env.env_vars``). verl must live in its own environment
(``make verl-env`` builds ``.venv-verl``): it pins ``transformers<5.11`` and hydra's
``antlr4-python3-runtime==4.9.*``, which breaks math-verify in the workbench's own.

Each estimator has verl's signature plus ``entropies`` and ``logp_old``: the outcome reward of a
response is ``token_level_rewards.sum(-1)`` (as verl's GRPO), rows are grouped by ``index``
(verl's ``uid``; a group's rows may be anywhere, in any order) into ``[G, n, T]``, the workbench's
advantage function runs, and the result goes back to verl's row order; advantages are also
returned as ``returns`` (as verl's GRPO). Rows without a valid token (verl's synthetic padding
samples) get 0 and do not count in their group; groups of different sizes are computed per
size (groups never mix, so this equals one group at a time); a group of one response is an
error. Coefficients come from ``algorithm.workbench`` in verl's config (e.g.
``+algorithm.workbench.alpha2=0.2``), over the algorithm's defaults; verl's
``norm_adv_by_std_in_grpo`` is ignored. The surprisal variants weight by ``-old_log_probs``
(the old-log-prob pass's, or the rollout's under ``rollout_correction.bypass_mode``).

**Entropies.** verl computes the old policy's per-token entropies (at the rollout temperature)
in the old-log-prob pass, but never gives them to ``compute_advantage``: the legacy trainer
pops them, the v1 trainer leaves them unread in its TransferQueue. :func:`register` closes
that gap with three wrappers, active only when ``algorithm.adv_estimator`` is a workbench one:

1. ``RayPPOTrainer._compute_old_log_prob`` (legacy trainer, ``trainer.use_v1=False``): keeps
   a reference to ``"entropys"`` under ``"old_entropys"``, which the fit loop does not pop;
2. ``PPOTrainer._compute_advantage`` (v1 trainer, the default): reads the ``"entropy"`` field
   of the batch's keys from the TransferQueue for the duration of the call;
3. ``compute_advantage`` in ``verl.trainer.ppo.ray_trainer`` and ``verl.trainer.ppo.v1.utils``:
   calls the estimator with ``entropies=`` (and pops ``"old_entropys"`` again) and
   ``logp_old=`` (the batch's ``"old_log_probs"``, which both trainers hold there).

Other estimators run through verl's code unchanged. Not covered: ``rollout_correction``'s
``bypass_mode`` for the entropy-weighted estimators (it skips the pass that computes entropies:
a clear error says so) and verl's experimental trainers. GRPO-S runs with verl's token-level
loss on its broadcast sequence advantage (the workbench's ``grpo_s_token`` variant): verl has no
arithmetic-mean sequence ratio.

**Not expressible in verl** (refused with a one-line error saying what to use): forking tokens
(``dapo_forking``) and ERC (``erc``): verl's policy losses receive old and new log-probs,
advantages and the mask, never entropies, and verl core has no entropy ratio clipping (it lives
in the Kwai-Klear/ERC fork).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from .. import advantages as adv
from ..algorithms import Algorithm, get_algorithm
from ..losses import MODE_OPTIONS

__all__ = [
    "estimator",
    "compute_advantages",
    "register",
    "verl_overrides",
    "hydra_overrides",
    "check_verl_algorithm",
    "ENTROPY_KEY",
]

ENTROPY_KEY = "old_entropys"  # legacy trainer: the copy the fit loop does not pop
LOGP_KEY = "old_log_probs"  # verl's name of the old policy's sampled-token log-probs
DEFAULT_NAMES = ("gtpo", "grpo_s", "entropy_adv", "gtpo_surprisal", "grpo_s_surprisal")
VERL_LOSS_MODES = ("vanilla", "clip_cov", "kl_cov")  # workbench loss modes verl has natively, same names

_ESTIMATORS: dict[str, Callable] = {}
_V1_ENTROPIES: contextvars.ContextVar = contextvars.ContextVar("workbench_v1_entropies", default=None)


def _needs(algo: Algorithm) -> str | None:
    """What the algorithm's advantages need beyond rewards: ``"entropies"``, ``"logp_old"`` or None."""
    if algo.entropy_signal == "surprisal":
        return "logp_old"
    return "entropies" if algo.uses_entropy else None


def _check_inputs(algorithm: str, rewards, mask, index, entropies, logp_old) -> None:
    if rewards.dim() != 2 or tuple(mask.shape) != tuple(rewards.shape):
        raise ValueError(
            f"token_level_rewards {tuple(rewards.shape)} and response_mask {tuple(mask.shape)} "
            "must both be [batch, response_length]"
        )
    if index is None:
        raise ValueError(
            f"{algorithm}: verl passed no index; the group of each response (the batch's "
            "non_tensor_batch['uid']) is needed"
        )
    if np.asarray(index).shape != (rewards.shape[0],):
        raise ValueError(
            f"index has shape {np.asarray(index).shape}, expected ({rewards.shape[0]},): one uid per response"
        )
    needs = _needs(get_algorithm(algorithm))
    if needs == "entropies" and entropies is None:
        raise ValueError(
            f"{algorithm} needs the old policy's per-token entropies, which verl's compute_advantage does not "
            "pass: call workbench.integrations.verl.register() in the process that runs verl's trainer (set "
            "VERL_USE_EXTERNAL_MODULES=workbench.integrations.verl_plugin for verl's Ray actors), and keep the "
            "old-log-prob pass (no algorithm.rollout_correction.bypass_mode)"
        )
    if needs == "logp_old" and logp_old is None:
        raise ValueError(
            f"{algorithm} needs the old policy's per-token log-probs (the batch's old_log_probs), which verl's "
            "compute_advantage does not pass: call workbench.integrations.verl.register() in the process that runs "
            "verl's trainer (VERL_USE_EXTERNAL_MODULES=workbench.integrations.verl_plugin for verl's Ray actors)"
        )
    for name, x in (("entropies", entropies), ("logp_old", logp_old)):
        if needs == name and tuple(x.shape) != tuple(mask.shape):
            raise ValueError(f"{name} has shape {tuple(x.shape)}, response_mask {tuple(mask.shape)}")


def compute_advantages(
    algorithm: str, token_level_rewards, response_mask, index, entropies=None, logp_old=None, **kwargs
):
    """Workbench advantages on verl's layout: ``[bs, T]`` tensors, ``index`` the uid per row;
    ``entropies`` (entropy-weighted algorithms) and ``logp_old`` (surprisal variants) ``[bs, T]``.

    Returns float32 advantages ``[bs, T]``, 0 at masked positions and on empty rows.
    """
    algo = get_algorithm(algorithm)
    rewards, mask = token_level_rewards, response_mask
    _check_inputs(algorithm, rewards, mask, index, entropies, logp_old)
    index = np.asarray(index)
    mask = mask.bool()
    scores = rewards.sum(-1)

    groups = defaultdict(list)  # uid -> rows with at least one valid token, in batch order
    for row in np.flatnonzero(mask.any(-1).cpu().numpy()):
        groups[index[row]].append(int(row))
    by_size = defaultdict(list)
    for uid, rows in groups.items():
        if len(rows) < 2:
            raise ValueError(
                f"{algorithm}: uid {uid!r} has {len(rows)} response; group advantages need at least "
                "2 per prompt (actor_rollout_ref.rollout.n >= 2)"
            )
        by_size[len(rows)].append(rows)

    advantages = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for group_rows in by_size.values():
        rows = torch.tensor(group_rows, device=mask.device)  # [G, n]
        ent = entropies[rows].float() if entropies is not None else None
        logp = logp_old[rows].float() if logp_old is not None else None
        adv = algo.advantages(scores[rows], ent, mask[rows], logp_old=logp, **kwargs)  # [G, n, T]
        advantages[rows.reshape(-1)] = adv.reshape(-1, mask.shape[1]).to(advantages)
    return advantages


def _config_kwargs(config) -> dict:
    """``algorithm.workbench`` of verl's config as a plain dict (empty when absent)."""
    extra = config.get("workbench", None) if config is not None else None
    if extra is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(extra, DictConfig):
            extra = OmegaConf.to_container(extra, resolve=True)
    except ImportError:  # pragma: no cover - verl always brings omegaconf
        pass
    return dict(extra)


def estimator(algorithm: str, **defaults) -> Callable:
    """A verl advantage estimator for the workbench algorithm ``algorithm``: a registry name whose
    method is its advantages (``clip_cov`` / ``kl_cov`` are loss modes: :func:`verl_overrides`;
    ``dapo_forking`` and ``erc`` are refused, see :func:`check_verl_algorithm`).

    ``defaults`` override the algorithm's advantage keyword arguments; ``algorithm.workbench``
    in verl's config overrides both. The same call returns the same function (so registering
    twice is harmless).
    """
    algo = check_verl_algorithm(algorithm)  # unknown names fail here, with the known ones listed
    if algo.loss_mode != "vanilla":
        raise ValueError(
            f"{algorithm}: its advantages are GRPO's and its method is verl's native loss_mode {algo.loss_mode!r}, "
            f"not an advantage estimator; configure verl with workbench.integrations.verl.verl_overrides({algorithm!r})"
        )
    key = algorithm + repr(sorted(defaults.items()))
    if key not in _ESTIMATORS:

        def fn(
            token_level_rewards, response_mask, index=None, config=None, entropies=None, logp_old=None, **_verl_extras
        ):
            advantages = compute_advantages(
                algorithm,
                token_level_rewards,
                response_mask,
                index,
                entropies,
                logp_old,
                **{**defaults, **_config_kwargs(config)},
            )
            return advantages, advantages

        fn.__name__ = f"compute_{algorithm}_advantage"
        fn.__doc__ = f"verl advantage estimator: workbench algorithm {algorithm!r} (see compute_advantages)."
        fn.workbench_algorithm = algorithm
        _ESTIMATORS[key] = fn
    return _ESTIMATORS[key]


# ---------------------------------------------------------------------------- verl's configuration


def check_verl_algorithm(algorithm: str | Algorithm) -> Algorithm:
    """The algorithm (a registry name or an :class:`~workbench.algorithms.Algorithm`) if verl can
    carry it, else a one-line ``ValueError`` naming the method and what to use instead."""
    algo = algorithm if isinstance(algorithm, Algorithm) else get_algorithm(algorithm)
    name = algo.name
    if algo.top_entropy_quantile < 1:
        raise ValueError(
            f"{name}: forking tokens need the entropies inside the policy loss, and verl's policy losses receive "
            "none; train it with the workbench trainer (python -m workbench train --algorithm "
            f"{name}) or TRL (EntropyShapedGRPOTrainer(algorithm={name!r}): TRL's top_entropy_quantile)"
        )
    if algo.loss_mode not in VERL_LOSS_MODES:
        raise ValueError(
            f"{name}: loss_mode {algo.loss_mode!r} needs the current and old entropies inside the policy loss, which "
            "verl's policy losses never receive (verl core has no such mode); train it with the workbench trainer "
            f"(python -m workbench train --algorithm {name})"
        )
    return algo


def _native_estimator(algo: Algorithm) -> dict | None:
    """verl's own ``grpo`` estimator settings when ``algo``'s advantages are GRPO's (or DAPO's) with a
    scale verl has (``"group"``: ``norm_adv_by_std_in_grpo=True``; ``"none"``: False), else None."""
    fn = inspect.unwrap(algo.advantage_fn)
    extra = set(algo.advantage_kwargs) - {"scale"}
    scale = algo.advantage_kwargs.get("scale", "group")
    if fn not in (adv.grpo, adv.dapo) or extra or scale not in ("group", "none"):
        return None
    return {"algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": scale == "group"}


def verl_overrides(algorithm: str | Algorithm) -> dict:
    """verl's configuration of a workbench algorithm: ``{dotted key: value}`` over verl's
    ``ppo_trainer`` config (:func:`hydra_overrides` gives them as command-line overrides).

    - the estimator: verl's native ``grpo`` where the advantages are GRPO's or DAPO's
      (``clip_cov``, ``kl_cov``, ``dapo``, ``grpo``, ``dr_grpo``), else the workbench's registered
      one under the algorithm's name (``register([name])`` in verl's processes: the plugin
      registers :data:`DEFAULT_NAMES`);
    - the actor's ``clip_ratio_low`` / ``clip_ratio_high``, ``loss_agg_mode`` (the same names),
      the KL loss (``use_kl_loss``, ``kl_loss_coef``, ``kl_loss_type="low_var_kl"``: k3);
    - ``actor.policy_loss.loss_mode`` and its options: Clip-Cov and KL-Cov are verl's own
      ``compute_policy_loss_clip_cov`` / ``_kl_cov``, with the algorithm's values (verl's yaml default
      ``ppo_kl_coef = 0.1`` is replaced by the algorithm's 1.0);
    - ``algorithm.filter_groups`` (dynamic sampling, ``metric="reward"``; verl's v1 trainer acts on
      it, the legacy one does not).

    Left to verl: rewards (DAPO's overlong shaping is verl's ``reward_model.overlong_buffer``),
    batch sizes, and verl's dual clip of the vanilla loss (``clip_ratio_c = 3``, on by default in
    verl, off in the workbench except for ERC; it only caps the loss of a negative-advantage token
    whose ratio exceeds 3). GRPO-S's sequence-level ratio becomes verl's token-level loss.
    """
    algo = check_verl_algorithm(algorithm)
    actor = "actor_rollout_ref.actor."
    out = _native_estimator(algo) or {"algorithm.adv_estimator": algo.name}
    out.update(
        {
            actor + "clip_ratio_low": algo.eps_low,
            actor + "clip_ratio_high": algo.eps_high,
            actor + "loss_agg_mode": algo.agg,
            actor + "use_kl_loss": algo.beta_kl > 0,
            actor + "policy_loss.loss_mode": algo.loss_mode,
        }
    )
    if algo.beta_kl > 0:
        out.update({actor + "kl_loss_coef": algo.beta_kl, actor + "kl_loss_type": "low_var_kl"})
    for key, value in algo.loss_kwargs().items():
        if key in MODE_OPTIONS:
            out[actor + "policy_loss." + key] = value
    if algo.clip_ratio_c is not None:
        out[actor + "clip_ratio_c"] = algo.clip_ratio_c
    out["algorithm.filter_groups.enable"] = algo.dynamic_sampling
    if algo.dynamic_sampling:
        out["algorithm.filter_groups.metric"] = "reward"
    return out


def hydra_overrides(algorithm: str | Algorithm) -> list[str]:
    """:func:`verl_overrides` as verl's command-line overrides (``key=value``, booleans lower-case)."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in verl_overrides(algorithm).items()]


# ---------------------------------------------------------------------------- entropy routing


def _workbench_fn(adv_estimator):
    """The registered workbench estimator named ``adv_estimator``, else None."""
    from verl.trainer.ppo import core_algos

    fn = core_algos.ADV_ESTIMATOR_REGISTRY.get(getattr(adv_estimator, "value", adv_estimator))
    return fn if hasattr(fn, "workbench_algorithm") else None


def _needs_entropies(adv_estimator) -> bool:
    fn = _workbench_fn(adv_estimator)
    return fn is not None and _needs(get_algorithm(fn.workbench_algorithm)) == "entropies"


def _check_no_bypass(algorithm_config):
    rc = algorithm_config.get("rollout_correction", None)
    if rc and rc.get("bypass_mode", False):
        raise ValueError(
            f"{algorithm_config.adv_estimator} needs the old policy's entropies, but "
            "algorithm.rollout_correction.bypass_mode=True skips the old-log-prob pass that computes them"
        )


def _wrap_compute_advantage(original):
    @functools.wraps(original)
    def compute_advantage(
        data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, norm_adv_by_std_in_grpo=True, config=None
    ):
        fn = _workbench_fn(adv_estimator)
        if fn is None:
            return original(
                data,
                adv_estimator,
                gamma=gamma,
                lam=lam,
                num_repeat=num_repeat,
                norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
                config=config,
            )
        from verl.trainer.ppo.ray_trainer import compute_response_mask

        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = compute_response_mask(data)
        legacy = data.batch.pop(ENTROPY_KEY) if ENTROPY_KEY in data.batch.keys() else None
        entropies = legacy if legacy is not None else _V1_ENTROPIES.get()
        advantages, returns = fn(
            token_level_rewards=data.batch["token_level_rewards"],
            response_mask=data.batch["response_mask"],
            index=data.non_tensor_batch.get("uid"),
            config=config,
            entropies=entropies,
            logp_old=data.batch[LOGP_KEY] if LOGP_KEY in data.batch.keys() else None,
        )
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        return data

    compute_advantage.__workbench_wrapped__ = original
    return compute_advantage


def _wrap_legacy_old_log_prob(original):
    @functools.wraps(original)
    def _compute_old_log_prob(self, batch):
        out = original(self, batch)
        if _needs_entropies(self.config.algorithm.adv_estimator):
            proto = out[0] if isinstance(out, tuple) else out  # verl 0.9: (old_log_prob, mfu)
            proto.batch[ENTROPY_KEY] = proto.batch["entropys"]
        return out

    _compute_old_log_prob.__workbench_wrapped__ = original
    return _compute_old_log_prob


def _wrap_v1_advantage(original):
    @functools.wraps(original)
    def _compute_advantage(self, batch, metrics):
        if not _needs_entropies(self.config.algorithm.adv_estimator):
            return original(self, batch, metrics)
        _check_no_bypass(self.config.algorithm)
        import transfer_queue as tq

        stored = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["entropy"])
        token = _V1_ENTROPIES.set(stored.to_padded_tensor()["entropy"])
        try:
            return original(self, batch, metrics)
        finally:
            _V1_ENTROPIES.reset(token)

    _compute_advantage.__workbench_wrapped__ = original
    return _compute_advantage


def _patch(owner, name, wrap):
    current = getattr(owner, name)
    if not hasattr(current, "__workbench_wrapped__"):
        setattr(owner, name, wrap(current))


def patch_trainers():
    """Route the old policy's entropies to the workbench estimators (idempotent; see the module doc)."""
    from verl.trainer.ppo import ray_trainer

    _patch(ray_trainer, "compute_advantage", _wrap_compute_advantage)
    _patch(ray_trainer.RayPPOTrainer, "_compute_old_log_prob", _wrap_legacy_old_log_prob)
    try:
        from verl.trainer.ppo.v1 import trainer_base
        from verl.trainer.ppo.v1 import utils as v1_utils
    except ImportError:  # the v1 trainer needs TransferQueue (verl[verl-core])
        return
    _patch(v1_utils, "compute_advantage", _wrap_compute_advantage)
    _patch(trainer_base.PPOTrainer, "_compute_advantage", _wrap_v1_advantage)


def register(names=DEFAULT_NAMES) -> dict[str, Callable]:
    """Register workbench estimators in verl's registry under their workbench names (default
    :data:`DEFAULT_NAMES`; any name of ``workbench.ALGORITHMS`` that verl does not use and whose
    method is an advantage, see :func:`estimator`),
    and patch verl's trainers to pass them entropies. Idempotent. Returns ``{name: function}``."""
    from verl.trainer.ppo import core_algos

    registered = {}
    for name in names:
        fn = estimator(name)
        existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(
                f"verl already has an advantage estimator named {name!r} ({existing.__module__}."
                f"{existing.__name__}); register the workbench's under another name with "
                f"verl.trainer.ppo.core_algos.register_adv_est('wb_{name}')(estimator({name!r}))"
            )
        core_algos.register_adv_est(name)(fn)
        registered[name] = fn
    patch_trainers()
    return registered
