"""The training configuration: one validated dataclass, saved with every run."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .algorithms import ALGORITHMS
from .losses import AGGREGATIONS, LEVELS

__all__ = ["TrainConfig", "DEFAULT_INIT"]

#: The shipped warm-start checkpoint (``python -m workbench warmstart`` rebuilds it).
DEFAULT_INIT = str(Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "addition-warmstart")


@dataclass
class TrainConfig:
    """Everything a run needs; every field is checked when the config is built.

    ``None`` for a loss or sampling field means "the algorithm's default" (see
    :data:`workbench.ALGORITHMS`); the resolved values are written to ``config.json``.
    """

    # what to train
    algorithm: str = "gtpo"  #: registry name: grpo, dapo, gtpo, grpo_s, ...
    task: str = "addition"  #: task name (workbench.tasks)
    task_params: dict = field(default_factory=dict)  #: e.g. {"digits": 3}; {"steps": 16} for chain
    model: str = "default"  #: "default" (shipped warm start), "tiny" (fresh tiny model) or a local path
    model_params: dict = field(default_factory=dict)  #: Qwen2Config overrides for model="tiny"
    trust_remote_code: bool = False
    chat_template: bool | None = None  #: wrap prompts in the tokenizer's chat template (None: when it has one)
    # algorithm knobs (None: the algorithm's default)
    advantage_kwargs: dict = field(default_factory=dict)  #: e.g. {"alpha2": 0.2, "normalize": "per_polarity"}
    eps_low: float | None = None
    eps_high: float | None = None
    agg: str | None = None
    level: str | None = None
    beta_kl: float | None = None  #: > 0 keeps a frozen reference model for the k3 KL penalty
    entropy_coef: float = 0.0
    clip_ratio_c: float | None = None  #: verl's dual clip (e.g. 3.0): negative-advantage losses capped at -A*c; None: off
    dynamic_sampling: bool | None = None
    max_sampling_rounds: int = 3  #: cap on rollout rounds per step with dynamic sampling
    overlong_shaping: bool | None = None
    overlong_cache: int = 4  #: DAPO's L_cache, in tokens (L_max = max_new_tokens)
    grop: bool = False  #: add the GROP length penalty to the rewards
    format_reward: float = 0.0  #: weight of the task's format reward term
    # rollout
    steps: int = 200
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_p: float = 1.0
    generation_cache: str = "dynamic"  #: dynamic (prompt computed once per group) | static (compiled decode on CUDA)
    # update
    lr: float = 2e-4
    lr_schedule: str = "constant"  #: constant | linear | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ppo_epochs: int = 1
    minibatches: int = 1  #: optimizer steps per epoch (the rollout batch is split)
    micro_batch_size: int = 0  #: sequences per forward/backward; 0 = the whole mini-batch
    max_bad_steps: int = 5  #: consecutive non-finite steps before the run stops
    gradient_checkpointing: bool = False  #: recompute activations in the backward (larger models, less memory)
    # logging, evaluation, checkpoints
    eval_every: int = 50
    eval_size: int = 128
    log_groups: int = 2  #: rollout groups written to samples.jsonl
    log_samples_every: int = 10
    save_every: int = 50
    keep_checkpoints: int = 2
    # system
    seed: int = 0
    output_dir: str = "runs/run"
    device: str = "auto"  #: auto | cpu | cuda
    mixed_precision: str = "auto"  #: auto (bf16 on GPU) | no | bf16 | fp16
    # several processes (torchrun / accelerate launch); ignored by a single process
    parallel: str = "ddp"  #: ddp (a model replica per process) | fsdp (parameters, gradients, optimizer sharded)
    rollout: str = "sharded"  #: sharded (each process samples its share of the prompts) | replicated

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for f in dataclasses.fields(self):
            self._check_type(f.name, getattr(self, f.name), types[f.name])
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: unknown {self.algorithm!r}; known: {', '.join(sorted(ALGORITHMS))}")
        from .tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"task: unknown {self.task!r}; known: {', '.join(sorted(TASKS))}")
        positive_ints = ("steps", "prompts_per_step", "group_size", "max_new_tokens", "ppo_epochs", "minibatches",
                         "max_sampling_rounds", "eval_every", "eval_size", "log_samples_every", "save_every",
                         "keep_checkpoints", "max_bad_steps", "overlong_cache")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "micro_batch_size", "log_groups", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group statistic needs two responses), got {self.group_size}")
        if self.minibatches > self.prompts_per_step * self.group_size:
            raise ValueError(f"minibatches ({self.minibatches}) exceeds the rollout batch "
                             f"({self.prompts_per_step} prompts x {self.group_size})")
        for name in ("temperature", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        for name in ("weight_decay", "max_grad_norm", "entropy_coef", "format_reward"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("eps_low", "eps_high", "beta_kl"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1:
            raise ValueError(f"clip_ratio_c must be > 1 (verl's dual clip, e.g. 3.0) or None (off), got {self.clip_ratio_c!r}")
        if self.eps_low is not None and self.eps_low >= 1:
            raise ValueError(f"eps_low must be < 1, got {self.eps_low!r}")
        lo, hi = self.resolved("eps_low"), self.resolved("eps_high")
        if hi < lo:
            raise ValueError(f"eps_high ({hi}) must be >= eps_low ({lo}): clip-higher widens the upper bound")
        if self.agg is not None and self.agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {AGGREGATIONS}, got {self.agg!r}")
        if self.level is not None and self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.overlong_cache > self.max_new_tokens:
            raise ValueError(f"overlong_cache ({self.overlong_cache}) must be <= max_new_tokens ({self.max_new_tokens})")
        choices = {"lr_schedule": ("constant", "linear", "cosine"), "device": ("auto", "cpu", "cuda"),
                   "mixed_precision": ("auto", "no", "bf16", "fp16"), "parallel": ("ddp", "fsdp"),
                   "generation_cache": ("dynamic", "static"),
                   "rollout": ("sharded", "replicated")}
        for name, options in choices.items():
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        if self.model not in ("default", "tiny"):
            from .models import check_model_source

            check_model_source(self.model)
        ALGORITHMS[self.algorithm].check_advantage_kwargs(self.advantage_kwargs)
        if self.model_params and self.model != "tiny":
            raise ValueError("model_params applies only to model='tiny'")

    @staticmethod
    def _check_type(name, value, annotation) -> None:
        ann = str(annotation)
        allowed = {
            "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,),
            "float | None": (int, float, type(None)), "str | None": (str, type(None)), "bool | None": (bool, type(None)),
        }[ann]
        if isinstance(value, bool) and bool not in allowed:
            raise TypeError(f"{name} must be {ann}, got a bool ({value!r})")
        if not isinstance(value, allowed):
            raise TypeError(f"{name} must be {ann}, got {type(value).__name__} ({value!r})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")

    def lr_factor(self, step: int) -> float:
        """The learning rate's multiplier at ``step`` (0-based): linear warm-up over
        ``warmup_steps``, then ``lr_schedule`` (constant, linear to 0, or cosine to 0 at ``steps``)."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        if self.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if self.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    # ------------------------------------------------------------------ resolution and I/O

    def resolved(self, name: str):
        """The value of a ``None``-means-algorithm-default field, resolved."""
        value = getattr(self, name)
        if value is not None:
            return value
        algo = ALGORITHMS[self.algorithm]
        return getattr(algo, name)

    def resolved_algorithm(self):
        """The registry's :class:`~workbench.algorithms.Algorithm` with this config's loss settings
        and advantage options (the algorithm's own ``advantage_kwargs`` updated by the config's)."""
        algo = ALGORITHMS[self.algorithm]
        names = ("eps_low", "eps_high", "agg", "level", "beta_kl", "dynamic_sampling", "overlong_shaping")
        kwargs = {**algo.advantage_kwargs, **self.advantage_kwargs}
        return algo.replace(**{k: self.resolved(k) for k in names}, advantage_kwargs=kwargs)

    def to_dict(self, resolve: bool = True) -> dict:
        data = dataclasses.asdict(self)
        if resolve:
            for name in ("eps_low", "eps_high", "agg", "level", "beta_kl", "dynamic_sampling", "overlong_shaping"):
                data[name] = self.resolved(name)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from a dict; unknown keys are an error that lists them."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
