"""The training configuration: one validated dataclass, saved with every run."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..algorithms import ALGORITHMS
from ..losses import AGGREGATIONS, LEVELS
from ..models.lora import DEFAULT_TARGET_MODULES

__all__ = ["TrainConfig", "DEFAULT_INIT"]

#: Fields whose ``None`` means "the algorithm's own value" (resolved from the registry).
_ALGORITHM_DEFAULTS = (
    "eps_low",
    "eps_high",
    "agg",
    "level",
    "beta_kl",
    "dynamic_sampling",
    "overlong_shaping",
    "clip_ratio_c",
    "top_entropy_quantile",
    "top_entropy_scope",
)

_AT_LEAST_ONE = (
    "steps",
    "prompts_per_step",
    "group_size",
    "max_new_tokens",
    "ppo_epochs",
    "minibatches",
    "max_sampling_rounds",
    "eval_every",
    "eval_size",
    "log_samples_every",
    "keep_checkpoints",
    "max_bad_steps",
    "overlong_cache",
    "eval_samples",
)

#: The shipped warm-start checkpoint (``python -m workbench warmstart`` rebuilds it).
DEFAULT_INIT = str(Path(__file__).resolve().parents[2] / "data" / "checkpoints" / "addition-warmstart")


def _show(value) -> str:
    """A default as a command-line user types it (JSON for dicts, true/false, none)."""
    if value is None:
        return "none"
    return json.dumps(value) if isinstance(value, (bool, dict)) else str(value)


def _field(default=None, help: str = "", *, choices: tuple | None = None, factory=None):
    """A config field with its documentation (``help``, shown by ``python -m workbench train
    --help`` and :meth:`TrainConfig.describe`) and, for a closed set of values, its ``choices``."""
    metadata = {"help": help, **({"choices": choices} if choices else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a run needs; every field is checked when the config is built.

    ``None`` for a loss or sampling field means "the algorithm's default" (see
    :data:`workbench.ALGORITHMS`); the resolved values are written to ``config.json``. Each
    field's meaning is in its ``help`` metadata (:meth:`describe`, ``train --help``).
    """

    # what to train
    algorithm: str = _field("gtpo", "RL algorithm: a name in the registry (workbench.ALGORITHMS)")
    task: str = _field("addition", "verifiable task (workbench.tasks)")
    task_params: dict = _field(
        help='the task\'s parameters, e.g. {"digits": 3}, {"steps": 16} for chain, '
        '{"path": "data.jsonl", "lenient": true} for jsonl',
        factory=dict,
    )
    model: str = _field(
        "default",
        "'default' (the shipped warm start), 'tiny' (a fresh 1 M-parameter model), a "
        "local checkpoint directory, or another source workbench.models.load_model reads",
    )
    model_params: dict = _field(help="Qwen2Config overrides for model='tiny', e.g. {\"hidden_size\": 64}", factory=dict)
    trust_remote_code: bool = _field(False, "run code shipped with a local checkpoint (off unless asked)")
    chat_template: bool | None = _field(None, "wrap prompts in the tokenizer's chat template (None: when it has one)")
    # algorithm knobs (None: the algorithm's default)
    advantage_kwargs: dict = _field(
        help='options of the advantage function, e.g. {"alpha2": 0.2, "normalize": '
        '"per_polarity"} (checked against its signature)',
        factory=dict,
    )
    eps_low: float | None = _field(None, "lower clip range of the ratio: clip(rho, 1 - eps_low, 1 + eps_high)")
    eps_high: float | None = _field(None, "upper clip range of the ratio (clip-higher when > eps_low)")
    agg: str | None = _field(None, "loss aggregation over tokens and responses", choices=AGGREGATIONS)
    level: str | None = _field(None, "importance ratio per token, or per response (GRPO-S's Eq. 10-11)", choices=LEVELS)
    beta_kl: float | None = _field(None, "weight of the k3 KL penalty to a frozen reference model (0: none)")
    entropy_coef: float = _field(
        0.0,
        "weight of the entropy bonus (aggregated like the loss, as in verl); with entropy_coef_final, "
        "its value at the first step; with entropy_target, the adaptive controller's start",
    )
    entropy_coef_final: float | None = _field(
        None, "the entropy bonus's weight at the last step: linear from entropy_coef over the run (None: constant)"
    )
    entropy_target: float | None = _field(
        None,
        "the adaptive entropy bonus of Skywork-OR1 as in TRL (None: off): after each step, the weight rises by "
        "entropy_coef_delta while the step's token-mean entropy is <= this target, else falls by it, within "
        "[entropy_coef_min, entropy_coef_max]; the bonus applies only while the last entropy was <= the target "
        "(TRL's target: 0.2)",
    )
    entropy_coef_delta: float = _field(0.005, "the adaptive entropy bonus's step (TRL's default)")
    entropy_coef_min: float = _field(0.0, "the adaptive entropy bonus's lower bound (TRL's default)")
    entropy_coef_max: float = _field(1.0, "the adaptive entropy bonus's upper bound (TRL's default)")
    clip_ratio_c: float | None = _field(
        None,
        "verl's dual clip, e.g. 3.0: the loss of a token with negative advantage is capped at -A * clip_ratio_c",
    )
    loss_mode_kwargs: dict = _field(
        help='options of the algorithm\'s loss mode over its registered ones, e.g. {"kl_cov_ratio": 0.0002} '
        "(clip_cov: clip_cov_ratio, clip_cov_lb, clip_cov_ub; kl_cov: kl_cov_ratio, ppo_kl_coef; erc: "
        "erc_low, erc_high)",
        factory=dict,
    )
    top_entropy_quantile: float | None = _field(
        None, "train on the top rho of tokens by behaviour entropy only, the forking tokens (1: every token)"
    )
    top_entropy_scope: str | None = _field(
        None,
        "the set the forking-token threshold runs over: mini_batch (the optimizer step's rows, behaviour "
        "entropies) or micro_batch (each loss call, current entropies: TRL)",
        choices=("mini_batch", "micro_batch"),
    )
    dynamic_sampling: bool | None = _field(None, "drop groups whose rewards are all equal and sample more (DAPO)")
    max_sampling_rounds: int = _field(3, "cap on sampling rounds per step with dynamic sampling")
    overlong_shaping: bool | None = _field(
        None, "DAPO's soft overlong penalty on responses longer than max_new_tokens - overlong_cache"
    )
    overlong_cache: int = _field(
        4,
        "DAPO's L_cache in tokens: the penalty ramps from 0 to -1 over the last "
        "overlong_cache tokens of max_new_tokens",
    )
    grop: bool = _field(False, "add the paper's GROP group-relative length penalty (Appendix D) to the rewards")
    format_reward: float = _field(0.0, "weight of the task's format reward term")
    # rollout
    steps: int = _field(200, "RL steps")
    prompts_per_step: int = _field(16, "prompts sampled per step (per sampling round)")
    group_size: int = _field(8, "responses sampled per prompt (n)")
    max_new_tokens: int = _field(
        20, "response budget in tokens (also L_max of overlong shaping and Dr. GRPO's constant length)"
    )
    temperature: float = _field(1.0, "sampling temperature (entropies and log-probs are taken at it too)")
    top_p: float = _field(1.0, "nucleus sampling threshold (1: off)")
    generation_cache: str = _field(
        "dynamic",
        "KV cache of generation: dynamic (each prompt computed once per group) or static (compiled decode on CUDA)",
        choices=("dynamic", "static"),
    )
    drop_finished: bool = _field(
        False,
        "decode with the workbench's own loop, in which a finished reply leaves the decode batch (its KV cache "
        "rows dropped): the same samples whether rows leave or stay, but not transformers generate's for the same "
        "seed; needs generation_cache='dynamic', not with parallel='fsdp'",
    )
    # update
    lr: float = _field(2e-4, "AdamW learning rate")
    lr_schedule: str = _field(
        "constant", "learning-rate schedule after warm-up", choices=("constant", "linear", "cosine")
    )
    warmup_steps: int = _field(0, "steps of linear learning-rate warm-up")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    max_grad_norm: float = _field(1.0, "gradient clipping norm")
    ppo_epochs: int = _field(1, "passes over each rollout batch")
    minibatches: int = _field(1, "optimizer steps per epoch (the rollout batch is split)")
    micro_batch_size: int = _field(0, "sequences per forward/backward (gradients accumulate); 0: the whole mini-batch")
    max_bad_steps: int = _field(5, "consecutive non-finite updates before the run stops")
    gradient_checkpointing: bool = _field(False, "recompute activations in the backward (less memory, same numbers)")
    # LoRA (peft): train a low-rank adapter instead of every weight
    lora_rank: int = _field(
        0,
        "rank r of a LoRA adapter trained through peft instead of the whole model (0: full fine-tuning); the "
        "base weights stay frozen, the optimizer holds the adapter only, checkpoints hold the adapter",
    )
    lora_alpha: float = _field(16.0, "LoRA's alpha: the adapter's update B @ A is scaled by lora_alpha / lora_rank")
    lora_target_modules: str | list = _field(
        ",".join(DEFAULT_TARGET_MODULES),
        "the modules that get an adapter, by name (a module matches when its name ends with one; comma-separated "
        "or a list): the attention and MLP projections of Llama-style models and the tiny one",
    )
    # logging, evaluation, checkpoints
    eval_every: int = _field(50, "steps between held-out evaluations (and at the last step)")
    eval_size: int = _field(128, "held-out problems per evaluation (at most the task's held-out split)")
    eval_samples: int = _field(
        1,
        "sampled replies per held-out problem: sampled_accuracy over all of them, and pass@k for k = 1, 2, 4, ... "
        "up to eval_samples (the unbiased estimator) in eval.jsonl",
    )
    log_groups: int = _field(2, "rollout groups written to samples.jsonl when samples are logged")
    log_samples_every: int = _field(10, "steps between logged samples (and step 1)")
    save_every: int = _field(
        50,
        "steps between checkpoints (and at the last step); 0: never (no checkpoint written: the run cannot be resumed)",
    )
    keep_checkpoints: int = _field(2, "newest checkpoints kept")
    report_to: str | list = _field(
        "none",
        "also log every metrics.jsonl and eval.jsonl column to: none, tensorboard (run_dir/tensorboard), trackio "
        "(its local store) or wandb (offline, run_dir/wandb), as TRL's report_to; several as a list or "
        "comma-separated; the run directory stays the record (may change on resume)",
    )
    # system
    seed: int = _field(0, "random seed (sampling, prompts, mini-batch order)")
    output_dir: str = _field("runs/run", "the run directory")
    device: str = _field("auto", "auto (CUDA when present), cpu or cuda", choices=("auto", "cpu", "cuda"))
    mixed_precision: str = _field(
        "auto", "auto (bf16 on a GPU), no, bf16 or fp16", choices=("auto", "no", "bf16", "fp16")
    )
    # several processes (torchrun / accelerate launch); ignored by a single process
    parallel: str = _field(
        "ddp",
        "several processes: ddp (a model replica per process) or fsdp (parameters, "
        "gradients and optimizer state sharded)",
        choices=("ddp", "fsdp"),
    )
    rollout: str = _field(
        "sharded",
        "several processes: sharded (each samples its share of the prompts) or "
        "replicated (each samples the whole batch: the one-process run, number for "
        "number)",
        choices=("sharded", "replicated"),
    )

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check every field (type, range, choices, the model source, the advantage options);
        raise ``TypeError``/``ValueError`` naming the field."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for f in dataclasses.fields(self):
            self._check_type(f.name, getattr(self, f.name), types[f.name])
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: unknown {self.algorithm!r}; known: {', '.join(sorted(ALGORITHMS))}")
        from ..tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"task: unknown {self.task!r}; known: {', '.join(sorted(TASKS))}")
        self._check_ranges()
        for f in dataclasses.fields(self):
            options, value = f.metadata.get("choices"), getattr(self, f.name)
            if options and value is not None and value not in options:
                raise ValueError(f"{f.name} must be one of {options}, got {value!r}")
        if self.model not in ("default", "tiny"):
            from ..models.load import check_model_source

            check_model_source(self.model)
        ALGORITHMS[self.algorithm].check_advantage_kwargs(self.advantage_kwargs)
        self.resolved_algorithm()  # the loss settings together (loss_mode_kwargs, clip_ratio_c, forking tokens)
        from .trackers import report_to_names

        report_to_names(self.report_to)
        if self.model_params and self.model != "tiny":
            raise ValueError("model_params applies only to model='tiny'")
        self.lora_targets()
        if self.drop_finished and self.generation_cache == "static":
            raise ValueError(
                "drop_finished runs its own decode loop on the dynamic cache: set generation_cache='dynamic'"
            )

    def lora_targets(self) -> list[str]:
        """The names of ``lora_target_modules`` as a list (checked: at least one, no empty name)."""
        value = self.lora_target_modules
        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"lora_target_modules must name at least one module (e.g. 'q_proj,v_proj'), got {value!r}")
        return [n.strip() for n in names]

    def _check_ranges(self) -> None:
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in (
            "save_every",
            "warmup_steps",
            "lora_rank",
            "micro_batch_size",
            "log_groups",
            "seed",
            "weight_decay",
            "max_grad_norm",
            "entropy_coef",
            "entropy_coef_final",
            "entropy_target",
            "entropy_coef_delta",
            "entropy_coef_min",
            "entropy_coef_max",
            "format_reward",
            "eps_low",
            "eps_high",
            "beta_kl",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group statistic needs two responses), got {self.group_size}")
        if self.minibatches > self.prompts_per_step * self.group_size:
            raise ValueError(
                f"minibatches ({self.minibatches}) exceeds the rollout batch "
                f"({self.prompts_per_step} prompts x {self.group_size})"
            )
        for name in ("temperature", "lr", "lora_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1:
            raise ValueError(
                f"clip_ratio_c must be > 1 (verl's dual clip, e.g. 3.0) or None (off), got {self.clip_ratio_c!r}"
            )
        if self.eps_low is not None and self.eps_low >= 1:
            raise ValueError(f"eps_low must be < 1, got {self.eps_low!r}")
        lo, hi = self.resolved("eps_low"), self.resolved("eps_high")
        if hi < lo:
            raise ValueError(f"eps_high ({hi}) must be >= eps_low ({lo}): clip-higher widens the upper bound")
        if self.entropy_target is not None and self.entropy_coef_final is not None:
            raise ValueError(
                "entropy_target (the adaptive bonus) and entropy_coef_final (the linear schedule) exclude each "
                "other: set one of them"
            )
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError(
                f"entropy_coef_min ({self.entropy_coef_min}) must be <= entropy_coef_max ({self.entropy_coef_max})"
            )
        if self.top_entropy_quantile is not None and not 0 < self.top_entropy_quantile <= 1:
            raise ValueError(f"top_entropy_quantile must be in (0, 1], got {self.top_entropy_quantile!r}")
        if self.overlong_cache > self.max_new_tokens:
            raise ValueError(
                f"overlong_cache ({self.overlong_cache}) must be <= max_new_tokens ({self.max_new_tokens})"
            )

    @classmethod
    def choices(cls, name: str) -> tuple | None:
        """The values field ``name`` takes, when a closed set (algorithms and tasks: the registries)."""
        if name == "algorithm":
            return tuple(sorted(ALGORITHMS))
        if name == "task":
            from ..tasks import TASKS

            return tuple(sorted(TASKS))
        return {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}[name]

    @classmethod
    def describe(cls, name: str) -> str:
        """Field ``name``'s documentation: meaning, default and choices (as ``train --help`` shows)."""
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        text = f.metadata["help"]
        if default is None and name in _ALGORITHM_DEFAULTS:
            values = {}
            for algo in sorted(ALGORITHMS):
                values.setdefault(getattr(ALGORITHMS[algo], name), []).append(algo)
            per_algo = "; ".join(f"{', '.join(names)}: {_show(value)}" for value, names in values.items())
            text += (
                f" (default: the algorithm's own: {per_algo})"
                if len(values) > 1
                else f" (default: the algorithm's own: {_show(next(iter(values)))} for every registered one)"
            )
        else:
            text += f" (default: {_show(default)})"
        options = cls.choices(name)
        return text + (f" (choices: {', '.join(options)})" if options else "")

    @staticmethod
    def _check_type(name, value, annotation) -> None:
        ann = str(annotation)
        allowed = {
            "str": (str,),
            "int": (int,),
            "float": (int, float),
            "bool": (bool,),
            "dict": (dict,),
            "float | None": (int, float, type(None)),
            "str | None": (str, type(None)),
            "bool | None": (bool, type(None)),
            "str | list": (str, list),
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
        """The registry's :class:`~workbench.algorithms.Algorithm` with this config's loss settings,
        advantage and loss-mode options (the algorithm's own updated by the config's)."""
        algo = ALGORITHMS[self.algorithm]
        kwargs = {**algo.advantage_kwargs, **self.advantage_kwargs}
        mode = {**algo.loss_mode_kwargs, **self.loss_mode_kwargs}
        resolved = {k: self.resolved(k) for k in _ALGORITHM_DEFAULTS}
        return algo.replace(**resolved, advantage_kwargs=kwargs, loss_mode_kwargs=mode)

    def entropy_bonus(self) -> bool:
        """Whether an entropy bonus may be on at some step (constant, scheduled or adaptive)."""
        return self.entropy_coef > 0 or bool(self.entropy_coef_final) or self.entropy_target is not None

    def to_dict(self, resolve: bool = True) -> dict:
        data = dataclasses.asdict(self)
        if resolve:
            for name in _ALGORITHM_DEFAULTS:
                data[name] = self.resolved(name)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a dict; unknown keys are an error that lists them."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path) -> TrainConfig:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)
