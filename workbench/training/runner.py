"""The model's side of a training step: sampling responses and scoring their tokens.

:class:`ModelRunner` holds what every forward of a run shares (tokenizer, chat template,
temperature, precision, sharding) so that the trainer asks for samples and token statistics
without repeating them.
"""

from __future__ import annotations

import torch

from ..models.generation import Generated, format_prompts, generate
from ..models.scoring import token_stats_from_model
from . import distributed
from .rollout import Batch, Group, collate

__all__ = ["ModelRunner"]


class ModelRunner:
    """Generation and token statistics with a run's settings (``config``: a ``TrainConfig``)."""

    def __init__(self, config, tokenizer, accelerator, *, fsdp: bool = False):
        self.config, self.tokenizer, self.accelerator, self.fsdp = config, tokenizer, accelerator, fsdp

    def generate(self, model, prompts: list[str], n: int, *, do_sample: bool) -> Generated:
        """``n`` responses per prompt (the prompts wrapped in the chat template as configured);
        under FSDP every process keeps stepping until all have finished (``synced_gpus``)."""
        c = self.config
        prompts = format_prompts(self.tokenizer, prompts, c.chat_template)
        kwargs = {"temperature": c.temperature, "top_p": c.top_p, "synced_gpus": self.fsdp, "cache": c.generation_cache}
        kwargs["drop_finished"] = c.drop_finished
        return generate(
            model,
            self.tokenizer,
            prompts,
            n=n,
            max_new_tokens=c.max_new_tokens,
            do_sample=do_sample,
            autocast=self.accelerator.autocast(),
            **kwargs,
        )

    def token_stats(self, model, input_ids, attention_mask, response_mask, *, grad: bool, group_size: int = 1):
        """``(log-probs, entropies)`` ``[B, T]`` of the response tokens at the sampling temperature.
        ``group_size``: rows in consecutive groups sharing a prompt, computed once per group where
        :func:`~workbench.models.scoring.token_stats_from_model` can. Under FSDP the LM-head weight is
        sharded outside the model's forward, so the statistics come from the model's own logits
        (only the response positions' are computed; every row's prompt is computed)."""
        kwargs = {"temperature": self.config.temperature, "method": "logits" if self.fsdp else "auto"}
        kwargs["group_size"] = group_size
        entropy_grad = grad and self.config.entropy_bonus()
        with torch.set_grad_enabled(grad), self.accelerator.autocast():
            return token_stats_from_model(
                model,
                input_ids,
                attention_mask,
                response_len=response_mask.shape[1],
                response_mask=response_mask,
                entropy_grad=entropy_grad,
                **kwargs,
            )

    def batch_stats(self, model, batch: Batch, *, grad: bool):
        """:meth:`token_stats` of a batch of whole groups: each group's prompt computed once."""
        args = (batch.input_ids, batch.attention_mask, batch.response_mask)
        return self.token_stats(model, *args, grad=grad, group_size=batch.group_size)

    def entropy_sums(self, model, groups: list[Group], stand_in: Group) -> tuple[float, float]:
        """``(entropy sum, token count)`` of ``groups``, from no-grad passes over at most
        ``prompts_per_step`` groups each (under FSDP, whose forwards are collective, every process
        runs as many passes as the busiest one, a stand-in group at zero weight filling in)."""
        size = self.config.prompts_per_step
        chunks = [groups[i : i + size] for i in range(0, len(groups), size)]
        passes = int(distributed.max_over_processes(self.accelerator, len(chunks))) if self.fsdp else len(chunks)
        total, tokens = 0.0, 0.0
        for i in range(passes):
            b = collate(
                chunks[i] if i < len(chunks) else [stand_in], self.tokenizer.pad_token_id, self.accelerator.device
            )
            _, ent = self.batch_stats(model, b, grad=False)
            if i < len(chunks):
                total, tokens = total + float(ent[b.response_mask].sum()), tokens + float(b.response_mask.sum())
        return total, tokens
