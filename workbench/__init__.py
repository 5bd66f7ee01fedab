"""gtpo-workbench: GRPO, DAPO, GTPO and GRPO-S (arXiv 2508.04349) for study and training.

The papers' formulas sit at the top: :mod:`workbench.advantages`, :mod:`workbench.losses`,
:mod:`workbench.entropy` and :mod:`workbench.rewards`, with :data:`ALGORITHMS` (a name -> an
advantage function and its loss defaults). The machinery lives in wings: :mod:`workbench.training`
(the trainer), :mod:`workbench.models` (loading, sampling, token statistics of a model),
:mod:`workbench.analysis` (studies, records, real-model measurements), :mod:`workbench.tasks`,
:mod:`workbench.viz` and :mod:`workbench.integrations`; :mod:`workbench.runs` is the run
directory that training writes and analysis and figures read. :mod:`workbench.exploration`
holds pass@k.
"""

from . import advantages, entropy, exploration, losses, rewards
from .advantages import (
    dapo,
    entropy_advantage,
    grpo,
    grpo_s,
    gtpo,
    shaped_rewards_grpo_s,
    shaped_rewards_gtpo,
    shaping_signal,
)
from .algorithms import ALGORITHMS, Algorithm, get_algorithm, register_algorithm
from .entropy import token_stats
from .exploration import mean_pass_at_k, pass_at_k, pass_at_k_curve
from .losses import LOSS_MODES, policy_loss, register_policy_loss, top_entropy_mask
from .rewards import grop_penalty, overlong_penalty

__version__ = "0.1.0"

# Training, tasks and runs pull in transformers and accelerate: imported on first use.
_LAZY = {
    "train": "training",
    "resume": "training",
    "Trainer": "training",
    "TrainConfig": "training",
    "load_run": "runs",
    "get_task": "tasks",
    "token_stats_from_model": "models",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = [
    "ALGORITHMS",
    "LOSS_MODES",
    "TrainConfig",
    "Trainer",
    "get_task",
    "load_run",
    "resume",
    "train",
    "Algorithm",
    "advantages",
    "dapo",
    "entropy",
    "entropy_advantage",
    "exploration",
    "get_algorithm",
    "grop_penalty",
    "grpo",
    "grpo_s",
    "gtpo",
    "losses",
    "mean_pass_at_k",
    "overlong_penalty",
    "pass_at_k",
    "pass_at_k_curve",
    "policy_loss",
    "register_algorithm",
    "register_policy_loss",
    "rewards",
    "shaped_rewards_gtpo",
    "shaped_rewards_grpo_s",
    "shaping_signal",
    "token_stats",
    "token_stats_from_model",
    "top_entropy_mask",
]
