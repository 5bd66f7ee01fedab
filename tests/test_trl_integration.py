"""TRL integration: TRL's loss receives the workbench's GTPO/GRPO-S advantages, and a few steps train.

The check is independent of the subclass's own code path: inside TRL's loss, the test
recomputes every completion's reward with the task and its entropies with
``workbench.token_stats_from_model``, applies ``workbench.gtpo``/``grpo_s``, and compares
with the advantages TRL's loss received.
"""

import pytest
import torch

pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e '.[bench]'")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from workbench import advantages as adv  # noqa: E402
from workbench.integrations.trl import EntropyShapedGRPOTrainer  # noqa: E402
from workbench.models.load import load_model  # noqa: E402
from workbench.models.scoring import token_stats_from_model  # noqa: E402
from workbench.tasks import get_task  # noqa: E402
from workbench.training.config import DEFAULT_INIT  # noqa: E402

N = 4


def make_trainer(tmp_path, algorithm, steps=2):
    task = get_task("addition")
    model, tokenizer = load_model(DEFAULT_INIT)
    examples = {e.prompt: e for e in task.generate("train", 8, seed=3)}

    def reward(prompts, completions, **_):
        return [task.reward(examples[p], c) for p, c in zip(prompts, completions)]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4 * N,
        num_generations=N,
        max_completion_length=16,
        max_steps=steps,
        learning_rate=1e-3,
        beta=0.0,
        top_k=0,
        temperature=1.0,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        shuffle_dataset=False,
        seed=0,
        disable_dropout=True,
    )
    trainer = EntropyShapedGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": p} for p in examples]),
        algorithm=algorithm,
    )
    return trainer, task, examples, tokenizer


@pytest.mark.parametrize("algorithm,fn", [("gtpo", adv.gtpo), ("grpo_s", adv.grpo_s)])
def test_trl_loss_receives_workbench_advantages(tmp_path, algorithm, fn):
    trainer, task, examples, tokenizer = make_trainer(tmp_path, algorithm)
    seen = []
    compute_loss = trainer._compute_loss

    def spy(model, inputs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = inputs["completion_mask"].bool()
        T = mask.shape[1]
        with torch.no_grad():
            _, ent = token_stats_from_model(
                model,
                ids,
                torch.cat([inputs["prompt_mask"], mask.long()], 1),
                response_len=T,
                response_mask=mask,
                method="logits",
            )
        prompts = tokenizer.batch_decode(inputs["prompt_ids"], skip_special_tokens=True)
        texts = tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
        rewards = torch.tensor([task.reward(examples[p], t) for p, t in zip(prompts, texts)])
        # TRL shuffles a generation batch before the loss: regroup the rows by prompt
        order = torch.tensor(sorted(range(len(prompts)), key=lambda i: prompts[i]))
        assert all(prompts[order[i]] == prompts[order[i - i % N]] for i in range(len(prompts)))
        grouped = fn(rewards[order].view(-1, N), ent[order].view(-1, N, T), mask[order].view(-1, N, T)).view(-1, T)
        expected = torch.empty_like(grouped)
        expected[order] = grouped
        seen.append((inputs["advantages"].detach().clone(), expected, mask, rewards[order]))
        return compute_loss(model, inputs)

    trainer._compute_loss = spy
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert seen, "TRL's loss was never called"
    informative = 0
    for got, expected, mask, rewards in seen:
        assert got.shape == expected.shape  # token-level [B, T]
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
        assert (got[~mask] == 0).all()
        informative += int((rewards.view(-1, N).std(-1) > 0).sum())
    assert informative > 0, "no group had mixed rewards: the comparison would be vacuous"
    if algorithm == "gtpo":  # token-specific: some response has different values along its tokens
        got = seen[0][0]
        assert any(got[i][seen[0][2][i]].unique().numel() > 1 for i in range(got.shape[0]))
    changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))
    assert changed, "a few TRL steps with workbench advantages did not update the model"
    logs = [h for h in trainer.state.log_history if "workbench/entropy" in h]
    assert logs and all(h["workbench/entropy"] > 0 for h in logs)


def test_unknown_algorithm_is_rejected(tmp_path):
    with pytest.raises((KeyError, ValueError), match="nope"):
        make_trainer(tmp_path, "nope")
