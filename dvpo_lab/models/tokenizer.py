"""Tokenizers the project builds itself, so the embedded default needs no download."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
# Every printable ASCII character plus newline: enough for the arithmetic testbed and for GSM8K text
# (anything else maps to <unk>). Order is fixed so a saved vocabulary never changes meaning.
CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer (a `tokenizers` WordLevel over single characters), left padding.

    One token per character keeps the tiny model's job regular (the arithmetic testbed writes digits one
    token each) and costs nothing to build; it is saved and reloaded with the model like any HF tokenizer.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
        model_max_length=4096,
        model_input_names=["input_ids", "attention_mask"],
    )
