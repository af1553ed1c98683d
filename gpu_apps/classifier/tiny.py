"""A tiny random DeBERTa-v3-style classifier and a tokenizer trained offline, for tests and local dev.

Nothing is downloaded. :func:`build_tiny_checkpoint` writes a directory in the same layout as the
production checkpoint (config.json, model.safetensors, tokenizer files).
:meth:`gpu_apps.classifier.engine.ClassifierEngine.from_pretrained_dir` loads it the same way it
loads the real model::

    python -m gpu_apps.classifier.tiny /tmp/tiny-classifier

The backbone uses the DeBERTa-v3 attention settings: relative attention, log-bucketed
positions, ``pos_att_type=["p2c", "c2p"]``, shared attention keys, layer-normed relative
embeddings, and no absolute position bias. Only the sizes are tiny. The tokenizer is a
SentencePiece-style Unigram model, like DeBERTa-v3's, trained with ``tokenizers`` on
:data:`TINY_CORPUS`. Its special tokens ``[PAD] [CLS] [SEP] [UNK]`` have ids 0-3, as in DeBERTa-v3.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import decoders as tk_decoders
from transformers import DebertaV2Config, PreTrainedTokenizerFast

from .heads import DEFAULT_SPEC
from .model import PromptClassifier

TINY_MODEL_NAME = "gatehouse/tiny-random-prompt-classifier"
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")

#: Training text for the tiny tokenizer: prompt-like sentences covering the task types.
TINY_CORPUS: tuple[str, ...] = (
    "Write a Python script that uses a for loop.",
    "Summarize this article about AI in three sentences.",
    "What is the capital of France?",
    "Based on the passage above, what year was the company founded?",
    "Write a mystery set in a small town where an everyday object goes missing.",
    "Classify the sentiment of this review as positive, negative or neutral.",
    "Rewrite the following paragraph in a formal tone.",
    "Brainstorm ten names for a coffee shop near the university.",
    "Extract every date and amount from the invoice below.",
    "You are a helpful travel assistant. Help me plan a trip to Japan.",
    "Explain the above in one sentence.",
    "Translate the text into German and keep the numbers unchanged.",
    "Implement a function that returns the n-th Fibonacci number in Rust.",
    "List the pros and cons of remote work for a small engineering team.",
    "Antibiotics are a type of medication used to treat bacterial infections.",
    "Given a list of integers, return the elements that appear exactly once.",
    "Draft an email to a customer apologising for the delayed shipment.",
    "How do tides work, and why are there two each day?",
    "Generate SQL that counts orders per customer for the last thirty days.",
    "Tell me a joke about databases, then explain why it is funny.",
    "Example 1: cat -> animal. Example 2: rose -> plant. Example 3: oak ->",
    "Sort the following words alphabetically: pear, apple, fig, banana.",
    "Prove that the square root of two is irrational.",
    "0123456789 +-*/=()[]{}<>:;,.!?'\"@#$%^&_|~`",
)


def train_tokenizer(corpus: tuple[str, ...] = TINY_CORPUS, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A Unigram tokenizer (Metaspace pre-tokenizer, ``[CLS] x [SEP]`` template) trained on ``corpus``."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = tk_decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="[UNK]", show_progress=False)
    tok.train_from_iterator(list(corpus) * 4, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        unk_token="[UNK]", mask_token="[MASK]", model_max_length=512)


def tiny_backbone_config(vocab_size: int, hidden: int = 32, layers: int = 2,
                         heads: int = 4) -> DebertaV2Config:
    """DeBERTa-v3 attention settings at tiny sizes."""
    return DebertaV2Config(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 2, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=0,
        initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True, max_relative_positions=-1,
        position_buckets=32, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, pad_token_id=0)


def build_tiny_model(vocab_size: int, seed: int = 0, head_std: float = 2.0, **sizes: Any) -> PromptClassifier:
    """A random tiny classifier. Heads use std ``head_std``, so logits differ clearly between prompts."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = PromptClassifier.from_config(tiny_backbone_config(vocab_size, **sizes), DEFAULT_SPEC)
        with torch.no_grad():
            for head in model.heads:
                head.fc.weight.normal_(0.0, head_std)
                head.fc.bias.normal_(0.0, 0.5)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def build_tiny_checkpoint(path: str | Path, seed: int = 0, **sizes: Any) -> Path:
    """Train the tokenizer, build the tiny model and save both into ``path``; returns ``path``."""
    out = Path(path)
    tokenizer = train_tokenizer()
    model = build_tiny_model(len(tokenizer), seed=seed, **sizes)
    model.save_pretrained_dir(out, base_model="tiny-deberta-v3", extra_config={"model_name": TINY_MODEL_NAME})
    tokenizer.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m gpu_apps.classifier.tiny OUT_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gpu_apps.classifier.tiny OUT_DIR", file=sys.stderr)
        return 2
    print(build_tiny_checkpoint(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
