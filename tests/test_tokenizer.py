"""The character tokenizer: exact round trips, save/load, special tokens."""

import json

from transformers import AutoTokenizer

from workbench.models.tokenizer import build_char_tokenizer
from workbench.tasks import get_task


def test_round_trips_every_task_text(tmp_path):
    tok = build_char_tokenizer()
    path = tmp_path / "t.jsonl"
    rows = [{"question": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(30)]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    tasks = [
        get_task("addition"),
        get_task("addition", digits=7),
        get_task("chain", steps=20),
        get_task("jsonl", path=str(path)),
    ]
    for task in tasks:
        for ex in task.generate("train", 20, 0):
            text = ex.prompt + ex.solution
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == len(text) and tok.unk_token_id not in ids
            assert tok.decode(ids) == text


def test_save_and_load_give_the_same_tokenizer(tmp_path):
    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "357+486=3c4c8|843\n  spaced  "
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(tok(text)["input_ids"]) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 1, "left")


def test_special_tokens_and_unknown_chars():
    tok = build_char_tokenizer()
    assert len(tok) < 128
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    ids = tok("12", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "12"
    batch = tok(["1", "123"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][:2] == [0, 0] and batch["attention_mask"][0] == [0, 0, 1]


def test_a_saved_model_checkpoint_keeps_spaces_and_newlines(tmp_path):
    # AutoTokenizer alone re-reads the tokenizer as Qwen2Tokenizer and drops whitespace.
    from workbench.models.load import build_tiny_model, load_model, save_model

    tok = build_char_tokenizer()
    save_model(
        build_tiny_model(
            tok, num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1
        ),
        tok,
        tmp_path / "m",
    )
    _, loaded = load_model(tmp_path / "m")
    text = "What is 12 + 3?\nAnswer: 15"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert len(loaded(text)["input_ids"]) == len(text)
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.padding_side == "left"
