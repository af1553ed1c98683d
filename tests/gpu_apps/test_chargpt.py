"""Tests for the character-level GPT: model, KV cache, sampling, checkpoint, corpus."""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch

from gpu_apps.chargpt import DEFAULT_CHECKPOINT, CharGPTEngine
from gpu_apps.chargpt.corpus import build_corpus, normalize_text
from gpu_apps.chargpt.model import CharGPT, GPTConfig
from gpu_apps.chargpt.tokenizer import CharTokenizer

TEXT = "hello world\nthe quick brown fox jumps over the lazy dog? 0123456789.\n"
BLOCK = 16


def _tiny_model(seed: int = 0) -> tuple[CharGPT, CharTokenizer]:
    """A 2-layer random model whose weights are scaled up so its logits are peaked (no near-ties)."""
    torch.manual_seed(seed)
    tokenizer = CharTokenizer.from_text(TEXT)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    model = CharGPT(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(20.0)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine() -> CharGPTEngine:
    model, tokenizer = _tiny_model()
    return CharGPTEngine.from_model(model, tokenizer)


@pytest.fixture(scope="module")
def shipped() -> CharGPTEngine:
    return CharGPTEngine.load()


def _greedy_reference(model: CharGPT, tokenizer: CharTokenizer, prompt: str, n: int) -> str:
    """Greedy decoding by re-running the full (uncached) forward pass each step."""
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-BLOCK:]]))
            ids.append(int(logits[0, -1].argmax()))
    return tokenizer.decode(ids[len(prompt):])


def test_tokenizer_roundtrip_and_unknown_chars() -> None:
    tok = CharTokenizer.from_text(TEXT)
    assert tok.decode(tok.encode("hello fox")) == "hello fox"
    assert tok.encode("h\u00e9\u2603") == [tok.encode("h")[0], tok.fallback_id, tok.fallback_id]
    assert tok.fallback == "?"
    clone = CharTokenizer.from_dict(tok.to_dict())
    assert clone.chars == tok.chars and clone.fallback == tok.fallback


def test_kv_cache_matches_full_forward() -> None:
    model, _ = _tiny_model(seed=3)
    idx = torch.randint(0, model.config.vocab_size, (2, BLOCK))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(batch_size=2)
        parts = [model(idx[:, :5], kv_cache=cache, start_pos=0)]  # prefill
        for pos in range(5, 9):  # one token at a time
            parts.append(model(idx[:, pos : pos + 1], kv_cache=cache, start_pos=pos))
        parts.append(model(idx[:, 9:], kv_cache=cache, start_pos=9))  # multi-token chunk after a prefix
    cached = torch.cat(parts, dim=1)
    assert cache.length == BLOCK
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


def test_temperature_zero_is_greedy(engine: CharGPTEngine) -> None:
    prompt, n = "the quick", BLOCK - len("the quick")
    text, reason = engine.generate_text(prompt, n, temperature=0.0, seed=123)
    assert reason == "length"
    assert text == _greedy_reference(engine.model, engine.tokenizer, prompt, n)
    # Greedy output ignores the seed; a vanishing nucleus is greedy too.
    assert engine.generate_text(prompt, n, temperature=0.0, seed=7)[0] == text
    assert engine.generate_text(prompt, n, temperature=1.0, top_p=1e-9, seed=7)[0] == text


def test_generate_is_deterministic_per_seed(engine: CharGPTEngine) -> None:
    kwargs = {"temperature": 1.0, "top_p": 0.95}
    first = engine.generate_text("hello", 40, seed=42, **kwargs)
    assert engine.generate_text("hello", 40, seed=42, **kwargs) == first
    assert engine.generate_text("hello", 40, seed=43, **kwargs)[0] != first[0]
    assert len(first[0]) == 40


def test_generate_streams_pieces_and_returns_finish_reason(engine: CharGPTEngine) -> None:
    stream = engine.generate("hello", 10, seed=1)
    pieces: list[str] = []
    with pytest.raises(StopIteration) as done:
        while True:
            pieces.append(next(stream))
    assert done.value.value == "length"
    assert "".join(pieces) == engine.generate_text("hello", 10, seed=1)[0]


def test_stop_strings_cut_output(engine: CharGPTEngine) -> None:
    full, _ = engine.generate_text("the", 30, seed=5)
    stop = full[10:13]
    cut = full.find(stop)
    text, reason = engine.generate_text("the", 30, seed=5, stop=["\u2603never", stop])
    assert (text, reason) == (full[:cut], "stop")
    assert stop not in text
    # A stop string that matches at the very first character yields nothing.
    assert engine.generate_text("the", 30, seed=5, stop=[full[:2]]) == ("", "stop")
    # A stop string that never appears leaves the output untouched.
    assert engine.generate_text("the", 30, seed=5, stop=["\u2603"]) == (full, "length")


def test_max_new_tokens_zero_and_validation(engine: CharGPTEngine) -> None:
    assert engine.generate_text("hi", 0) == ("", "length")
    for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            engine.generate_text("hi", 5, **bad)


def test_long_prompt_and_generation_beyond_block_size(engine: CharGPTEngine) -> None:
    long_prompt = TEXT * 3  # > block_size
    text, reason = engine.generate_text(long_prompt, 3 * BLOCK, temperature=0.0)
    assert reason == "length" and len(text) == 3 * BLOCK
    # Only the last block_size characters of the prompt matter.
    assert engine.generate_text(long_prompt[-BLOCK:], 3 * BLOCK, temperature=0.0)[0] == text
    sampled = engine.generate_text(long_prompt, 3 * BLOCK, seed=9)
    assert sampled == engine.generate_text(long_prompt, 3 * BLOCK, seed=9)


def test_unknown_characters_and_empty_prompt(engine: CharGPTEngine) -> None:
    text, reason = engine.generate_text("h\u00e9llo \u2603\x00\t", 8, seed=0)
    assert reason == "length" and len(text) == 8
    assert set(text) <= set(engine.tokenizer.chars)
    assert engine.generate_text("", 8, seed=0) == engine.generate_text("\n", 8, seed=0)
    assert engine.count_tokens("h\u00e9llo") == 5


def test_concurrent_calls_are_independent(engine: CharGPTEngine) -> None:
    expected = {seed: engine.generate_text("hello", 30, seed=seed) for seed in range(4)}
    results: dict[int, tuple[str, str]] = {}

    def work(seed: int) -> None:
        results[seed] = engine.generate_text("hello", 30, seed=seed)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_shipped_checkpoint_loads_and_generates(shipped: CharGPTEngine) -> None:
    assert DEFAULT_CHECKPOINT.is_file()
    assert DEFAULT_CHECKPOINT.stat().st_size <= 20 * 1024 * 1024
    info = shipped.info()
    assert info["name"] == "chargpt" and info["params"] > 1_000_000
    assert info["meta"]["val_loss"] < 2.0
    first = shipped.generate_text("Return the ", 60, seed=1234, temperature=0.8)
    assert first == shipped.generate_text("Return the ", 60, seed=1234, temperature=0.8)
    assert len(first[0]) == 60 and first[1] == "length"


def test_corpus_builder_is_deterministic() -> None:
    text_a, meta_a = build_corpus(["json", "textwrap"])
    text_b, meta_b = build_corpus(["json", "textwrap"])
    assert meta_a == meta_b and text_a == text_b
    assert meta_a.sha256 == hashlib.sha256(text_a.encode("ascii")).hexdigest()
    assert meta_a.num_docs > 10 and meta_a.num_chars == len(text_a)
    assert text_a.startswith("json:\n")
    assert all(ch == "\n" or " " <= ch <= "~" for ch in text_a)


def test_normalize_text_maps_to_printable_ascii() -> None:
    assert normalize_text("caf\u00e9 \u201cquoted\u201d\tx\r\n\u2603") == 'cafe "quoted"    x'
