"""A tiny causal LM and a byte-level BPE tokenizer built offline, for tests and local runs without downloads.

``save_tiny(path)`` writes a directory that ``QuantumGenerator.from_pretrained_dir`` loads exactly like the
real gpt-oss checkout (``config.json``, ``model.safetensors``, ``tokenizer.json``...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"

TINY_CORPUS: tuple[str, ...] = (
    "The quantum random number generator feeds the entropy pool.",
    "Each sampling step draws a token from the model distribution.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Gatehouse serves models behind one gateway.",
    "Photons hit a beam splitter and the detector clicks at random.",
    "Temperature scales the logits before the softmax.",
    "0123456789 + - * / = ( ) , . ; : ? ! ' \"",
)


def build_tiny_tokenizer(corpus: tuple[str, ...] = TINY_CORPUS,
                         vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` (any text round-trips through the byte alphabet)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN)


def build_tiny_model(vocab_size: int, eos_token_id: int, *, seed: int = 0, n_layer: int = 2, n_embd: int = 32,
                     n_head: int = 2, n_positions: int = 256) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 with tiny dimensions (deterministic for ``seed``)."""
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
                        pad_token_id=eos_token_id)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def save_tiny(path: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny tokenizer and model and save both to ``path``; return the path."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
