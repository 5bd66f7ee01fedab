"""A character-level tokenizer that is a real ``transformers`` tokenizer.

Every character of the default alphabet is one token; anything else maps to ``<unk>``. It is a
``PreTrainedTokenizerFast`` built with the ``tokenizers`` library, so ``save_pretrained`` /
``AutoTokenizer.from_pretrained(local_dir)`` round-trip it, and it left-pads for generation.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["ALPHABET", "SPECIAL_TOKENS", "build_char_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
#: Digits, letters, punctuation (the tasks use ``0-9 + - * = ; | c``), space and newline.
ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """``<pad>`` = 0, ``<eos>`` = 1, ``<unk>`` = 2, then one id per character."""
    chars = list(dict.fromkeys(ALPHABET + extra_chars))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return tok
