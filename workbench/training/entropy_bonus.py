"""The entropy bonus's weight over a run: constant, a linear schedule, or the adaptive controller.

- constant: ``entropy_coef`` at every step;
- linear (``entropy_coef_final``): from ``entropy_coef`` at the first step to ``entropy_coef_final`` at
  the last (:func:`workbench.losses.linear_entropy_coef`), per RL step;
- adaptive (``entropy_target``, Skywork-OR1's controller as TRL has it,
  :func:`workbench.losses.adaptive_entropy_coef`): after each RL step, with ``e`` the token-mean
  entropy of the batch it updated on (the behaviour policy's, over every process: TRL's number with
  one optimizer step per batch), the weight moves by ``entropy_coef_delta`` towards more bonus when
  ``e <= entropy_target`` and less otherwise; the bonus applies only while the last ``e`` was at or
  below the target (so not before the first step). Its state is saved with every checkpoint.
"""

from __future__ import annotations

from ..losses import adaptive_entropy_coef, linear_entropy_coef

__all__ = ["EntropyBonus"]


class EntropyBonus:
    """The weight of the entropy bonus at each step of a run with ``config`` (a ``TrainConfig``)."""

    def __init__(self, config):
        self.config = config
        self.coef = float(config.entropy_coef)  #: the adaptive controller's weight
        self.active = False  #: whether the last step's entropy was at or below the target

    @property
    def adaptive(self) -> bool:
        return self.config.entropy_target is not None

    def value(self, step: int) -> float:
        """The weight of RL step ``step`` (1, 2, ...)."""
        c = self.config
        if self.adaptive:
            return self.coef if self.active else 0.0
        if c.entropy_coef_final is not None:
            return linear_entropy_coef(step - 1, c.steps, c.entropy_coef, c.entropy_coef_final)
        return c.entropy_coef

    def observe(self, entropy: float) -> None:
        """The adaptive controller's update after a step whose token-mean entropy was ``entropy``."""
        c = self.config
        if not self.adaptive:
            return
        self.coef, self.active = adaptive_entropy_coef(
            self.coef,
            entropy,
            target=c.entropy_target,
            delta=c.entropy_coef_delta,
            coef_min=c.entropy_coef_min,
            coef_max=c.entropy_coef_max,
        )

    def state_dict(self) -> dict:
        return {"entropy_coef": self.coef, "entropy_bonus_active": self.active}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state.get("entropy_coef", self.coef))
        self.active = bool(state.get("entropy_bonus_active", self.active))
