"""What a training step samples and what it updates on: groups, their rewards, batches.

- :class:`Group`: the ``n`` responses sampled for one prompt, with their rewards once scored;
- :func:`compute_rewards`: the one place rewards are made: each response is checked by the task
  once, then every configured reward term is added (format, DAPO's overlong shaping, GROP);
- :class:`Batch`: kept groups padded into ``[B, P + T]`` tensors for the scoring and update passes;
- :class:`Scored`: the behaviour policy's log-probabilities and entropies of a batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace

import torch

from ..models.generation import Generated
from ..rewards import grop_penalty, overlong_penalty
from ..tasks import Example, Task

__all__ = ["Group", "Batch", "Scored", "groups_from", "compute_rewards", "collate", "check_overlong_budget"]


@dataclass
class Group:
    """The ``n`` responses sampled for one prompt (rows of ``generate``'s output)."""

    example: Example
    prompt_ids: torch.Tensor  # [n, P] left-padded
    prompt_mask: torch.Tensor  # [n, P]
    response_ids: torch.Tensor  # [n, T] right-padded after the end token
    response_mask: torch.Tensor  # [n, T] bool: the response's tokens, end token included
    truncated: torch.Tensor  # [n] bool: no end token within max_new_tokens
    texts: list[str]
    scores: torch.Tensor | None = None  # [n] the task's reward (1.0 for a correct final answer)
    outcome: torch.Tensor | None = None  # [n] float64: score + format term (what dynamic sampling compares)
    rewards: torch.Tensor | None = None  # [n] float32: every reward term (what the advantages use)

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    @property
    def correct(self) -> torch.Tensor:
        return self.scores > 0.5

    @property
    def informative(self) -> bool:
        """Whether its outcomes differ (a group whose rewards are all equal carries no correctness
        signal: GRPO gives it advantage 0 and DAPO's dynamic sampling drops it)."""
        return bool(self.outcome.max() != self.outcome.min())


def groups_from(gen: Generated, examples: list[Example]) -> list[Group]:
    """Split ``generate``'s output for ``examples`` (``n`` rows per prompt, in order) into groups."""
    n = len(gen.texts) // len(examples)
    out = []
    for g, example in enumerate(examples):
        rows = slice(g * n, (g + 1) * n)
        out.append(
            Group(
                example,
                gen.prompt_ids[rows],
                gen.prompt_mask[rows],
                gen.response_ids[rows],
                gen.response_mask[rows],
                gen.truncated[rows],
                gen.texts[rows],
            )
        )
    return out


def compute_rewards(
    task: Task, groups: list[Group], *, format_reward: float = 0.0, overlong: tuple | None = None, grop: bool = False
) -> list[Group]:
    """``groups`` with their rewards: every response scored once by ``task``, then

    ``reward = score + format_reward * format + overlong penalty + GROP penalty``, where the
    overlong penalty (``overlong=(max_len, cache_len)``, DAPO's soft punishment) and GROP (the
    paper's Appendix D, on the score plus format term) are added only when asked for. Returns
    new groups; the ones passed in are left as they are.
    """
    out = []
    for group in groups:
        scores = [task.reward(group.example, text) for text in group.texts]  # each response checked once
        outcome = [s + format_reward * task.format_reward(t) for s, t in zip(scores, group.texts)]
        base = torch.tensor(outcome, dtype=torch.float32)
        rewards = base.clone()
        if overlong is not None:
            rewards = rewards + overlong_penalty(group.lengths, max_len=overlong[0], cache_len=overlong[1])
        if grop:
            rewards = rewards + grop_penalty(base[None], group.lengths[None])[0]
        outcome = torch.tensor(outcome, dtype=torch.float64)
        out.append(replace(group, scores=torch.tensor(scores), outcome=outcome, rewards=rewards))
    return out


def check_overlong_budget(task: Task, tokenizer, max_new_tokens: int, cache_len: int) -> str | None:
    """Warn when DAPO's overlong shaping would penalise correct worked solutions of ``task``
    (tokenised with ``tokenizer``, plus the end token): the penalty starts after
    ``max_new_tokens - cache_len`` tokens, and a correct answer there gets less reward than a
    shorter one, which changes what the algorithms are compared on. Returns the warning, or
    ``None`` when no worked solution is penalised."""
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for s in task.worked_solutions()]
    start, longest = max_new_tokens - cache_len, max(lengths)
    penalised = sum(length > start for length in lengths)
    if not penalised:
        return None
    message = (
        f"overlong shaping penalises {penalised} of {len(lengths)} correct worked solutions of task "
        f"{task.name!r} (up to {longest} tokens with the end token; the penalty starts after max_new_tokens - "
        f"overlong_cache = {max_new_tokens} - {cache_len} = {start} tokens): raise max_new_tokens to at least "
        f"{longest + cache_len}, lower overlong_cache, or set overlong_shaping=false"
    )
    warnings.warn(message, stacklevel=4)
    return message


@dataclass
class Batch:
    """Groups padded into one batch of ``B = G * n`` rows (prompt left-padded, response right-padded)."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    response_mask: torch.Tensor  # [B, T] bool
    rewards: torch.Tensor  # [B]
    correct: torch.Tensor  # [B] bool
    truncated: torch.Tensor  # [B] bool
    prompts: list[str]  # [G]
    answers: list[str]  # [G] gold answers
    texts: list[str]  # [B]
    group_size: int
    idle: bool = False  # a stand-in at zero weight: this process has no group this step

    @property
    def groups(self) -> int:
        return len(self.prompts)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def rows(self, first: int, last: int, *, idle: bool = False) -> Batch:
        """Groups ``first`` to ``last - 1`` (whole groups, so that their statistics stay whole);
        ``idle``: the rows stand in at zero weight."""
        n = self.group_size
        rows = slice(first * n, last * n)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[rows]
            elif f.name == "texts":
                value = value[rows]
            elif f.name in ("prompts", "answers"):
                value = value[first:last]
            picked[f.name] = value
        return Batch(**{**picked, "idle": idle})


@dataclass
class Scored:
    """The behaviour policy's per-token statistics of a batch, ``[B, T]`` float32: log-probs
    of the sampled tokens and entropies (detached), the reference model's log-probs when there
    is a KL term, and, for the fused update, the forward's own outputs with gradient."""

    old_logp: torch.Tensor
    entropies: torch.Tensor
    ref_logp: torch.Tensor | None = None
    logp: torch.Tensor | None = None  # with gradient (fused update)
    entropies_grad: torch.Tensor | None = None  # with gradient (fused update)

    def rows(self, rows: slice) -> Scored:
        return replace(
            self, **{f.name: getattr(self, f.name)[rows] for f in fields(self) if getattr(self, f.name) is not None}
        )


def collate(groups: list[Group], pad_token_id: int, device, *, idle: bool = False) -> Batch:
    """Pad ``groups`` into one :class:`Batch` on ``device`` (responses cut to the longest one);
    ``idle``: a stand-in at zero weight (see :attr:`Batch.idle`)."""
    P = max(g.prompt_ids.shape[1] for g in groups)
    T = max(int(g.lengths.max()) for g in groups)

    def left(x, width, value):
        return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

    def right(x, width, value):
        x = x[:, :width]
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    prompt_ids = torch.cat([left(g.prompt_ids, P, pad_token_id) for g in groups])
    prompt_mask = torch.cat([left(g.prompt_mask, P, 0) for g in groups])
    response = torch.cat([right(g.response_ids, T, pad_token_id) for g in groups])
    response_mask = torch.cat([right(g.response_mask.long(), T, 0) for g in groups]).bool()
    return Batch(
        input_ids=torch.cat([prompt_ids, response], 1).to(device),
        attention_mask=torch.cat([prompt_mask, response_mask.long()], 1).to(device),
        response_mask=response_mask.to(device),
        rewards=torch.cat([g.rewards for g in groups]).to(device),
        correct=torch.cat([g.correct for g in groups]).to(device),
        truncated=torch.cat([g.truncated for g in groups]),
        prompts=[g.example.prompt for g in groups],
        answers=[g.example.answer for g in groups],
        texts=[t for g in groups for t in g.texts],
        group_size=groups[0].size,
        idle=idle,
    )
