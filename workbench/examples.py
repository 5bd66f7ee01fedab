"""The spec's worked example (one group, n = 4) and a tidy table of its advantages.

Used by the demo (``python -m workbench demo``), the first tutorial notebook and the tests.
"""

from __future__ import annotations

import pandas as pd
import torch

from .algorithms import ALGORITHMS

__all__ = ["spec_example", "advantage_table"]


def spec_example() -> dict[str, torch.Tensor]:
    """Responses 0 and 1 correct, 2 and 3 wrong; lengths 3, 2, 3, 2 (spec, "Worked example")."""
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    entropies = torch.tensor([[2.0, 4.0, 1.0], [3.0, 1.0, 0.0], [1.0, 4.0, 0.5], [3.0, 0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return {"rewards": rewards, "entropies": entropies, "mask": mask}


def advantage_table(
    rewards: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    algorithms: tuple[str, ...] = ("grpo", "dapo", "gtpo", "grpo_s"),
) -> pd.DataFrame:
    """One row per valid token of one group: reward, entropy and each algorithm's advantage."""
    if rewards is None:
        rewards, entropies, mask = spec_example().values()
    mask = mask.bool()
    columns = {name: ALGORITHMS[name].advantages(rewards, entropies, mask) for name in algorithms}
    rows = []
    for i in range(rewards.shape[-1]):
        for t in range(mask.shape[-1]):
            if mask[i, t]:
                row = {"response": i, "t": t, "reward": float(rewards[i]), "entropy": float(entropies[i, t])}
                row.update({name: float(a[i, t]) for name, a in columns.items()})
                rows.append(row)
    return pd.DataFrame(rows)
