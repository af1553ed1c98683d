"""Tests for the prompt task/complexity classifier: card post-processing, batching, loading, HTTP surface.

Nothing is downloaded: the model is a tiny random DeBERTa-v3-style network and the tokenizer is
trained offline (gpu_apps.classifier.tiny).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jwt
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from gpu_apps.classifier import (
    DEFAULT_SPEC,
    OUTPUT_KEYS,
    SERVICE_NAME,
    TASK_TYPES,
    ClassifierEngine,
    ClassifierSpec,
    PromptClassifier,
    create_app,
    hs256_authorizer,
    plan_batches,
    postprocess,
    to_columns,
)
from gpu_apps.classifier.model import DEBERTA_V3_BASE, backbone_config_for
from gpu_apps.classifier.tiny import TINY_MODEL_NAME, build_tiny_checkpoint, build_tiny_model, train_tokenizer

SECRET = "classifier-test-secret-0123456789abcdef"

PROMPTS = [
    "Write a Python script that uses a for loop.",
    "hi",
    "",
    "Summarize this article about AI in three sentences, then list the three most surprising claims "
    "it makes and explain for each one why a careful reader might doubt it.",
    "What is the capital of France?",
    "Rewrite the following paragraph in a formal tone: gonna be late, sorry!!",
    "Example 1: cat -> animal. Example 2: rose -> plant. Example 3: oak -> " * 3,
    "Brainstorm ten names for a coffee shop.",
    "Extract every date and amount from the invoice below. 2024-01-03 $12.50, 2024-02-11 $7.00",
    "Prove that the square root of two is irrational.",
    "?",
]

CARD_RESULT = {  # the model card's printed output for "Prompt: Write a Python script that uses a for loop."
    "task_type_1": "Code Generation", "task_type_2": "Text Generation", "task_type_prob": 0.767,
    "creativity_scope": 0.0826, "reasoning": 0.0632, "contextual_knowledge": 0.056, "number_of_few_shots": 0,
    "domain_knowledge": 0.9803, "no_label_reason": 0.0, "constraint_ct": 0.5578,
    "prompt_complexity_score": 0.27822,
}


def _logits(probs: list[float]) -> torch.Tensor:
    """One prompt's logits whose softmax is ``probs``."""
    return torch.log(torch.tensor([probs], dtype=torch.float64))


def card_example_logits() -> list[torch.Tensor]:
    """Logits constructed so that the softmax probabilities give the card's worked example."""
    task = [0.0033] * 12
    task[TASK_TYPES.index("Code Generation")] = 0.767
    task[TASK_TYPES.index("Text Generation")] = 0.2
    return [
        _logits(task),
        _logits([0.02, 0.1252, 0.8548]),            # creativity (2p0 + p1) / 2 = 0.0826
        _logits([0.9368, 0.0632]),                   # reasoning p1 = 0.0632
        _logits([0.944, 0.056]),                     # contextual p1 = 0.056
        _logits([0.99, 0.004, 0.003, 0.002, 0.0005, 0.0005]),  # few shots 0.0205 < 0.05 -> 0
        _logits([0.97, 0.0109, 0.01, 0.0091]),       # domain (3p0 + p1 + 2p2) / 3 = 0.9803
        torch.zeros((1, 1), dtype=torch.float64),    # no_label_reason: weight 0
        _logits([0.5578, 0.4422]),                   # constraint p0 = 0.5578
    ]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="module")
def engine(ckpt: Path) -> ClassifierEngine:
    return ClassifierEngine.from_pretrained_dir(ckpt, device="cpu")


# ---------------------------------------------------------------------------- post-processing
def test_card_worked_example_from_constructed_logits() -> None:
    (result,) = postprocess(card_example_logits())
    assert result == CARD_RESULT
    assert list(result) == list(CARD_RESULT)  # the card's key order
    assert isinstance(result["number_of_few_shots"], int)
    # The exact sum is 0.278225: numpy rounding (the card's) gives 0.27822, Python's round 0.27823.
    assert round(0.35 * 0.0826 + 0.25 * 0.0632 + 0.15 * 0.5578 + 0.15 * 0.9803 + 0.05 * 0.056, 5) == 0.27823


def test_card_example_in_bf16_and_float32_logits() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        (result,) = postprocess([x.to(dtype) for x in card_example_logits()])
        assert result["task_type_1"] == "Code Generation" and result["task_type_2"] == "Text Generation"
        assert abs(result["prompt_complexity_score"] - 0.27822) < 0.01


def test_second_task_cut_off_and_few_shots_floor() -> None:
    logits = card_example_logits()
    task = [0.00099] * 12  # 0.9 + 0.0901 + 10 x 0.00099 = 1
    task[TASK_TYPES.index("Open QA")] = 0.9
    task[TASK_TYPES.index("Chatbot")] = 0.0901  # rounds to 0.09 < 0.1
    logits[0] = _logits(task)
    logits[4] = _logits([0.2, 0.5, 0.2, 0.1 - 2e-9, 1e-9, 1e-9])  # 0.5 + 0.4 + 0.3 = 1.2
    (r,) = postprocess(logits)
    assert (r["task_type_1"], r["task_type_2"], r["task_type_prob"]) == ("Open QA", "NA", 0.9)
    assert r["number_of_few_shots"] == 1.2
    expected = np.round(0.35 * 0.0826 + 0.25 * 0.0632 + 0.15 * 0.5578 + 0.15 * 0.9803 + 0.05 * 0.056
                        + 0.05 * 1.2, 5)
    assert r["prompt_complexity_score"] == float(expected)


def test_postprocess_shapes_columns_and_spec() -> None:
    assert postprocess([torch.zeros((0, h.num_outputs)) for h in DEFAULT_SPEC.heads]) == []
    with pytest.raises(ValueError, match="8 heads"):
        postprocess(card_example_logits()[:7])
    bad = card_example_logits()
    bad[2] = torch.zeros((1, 3))
    with pytest.raises(ValueError, match="reasoning"):
        postprocess(bad)
    two = [torch.cat([x, x]) for x in card_example_logits()]
    cols = to_columns(postprocess(two))
    assert list(cols) == list(OUTPUT_KEYS) and cols["task_type_prob"] == [0.767, 0.767]
    assert ClassifierSpec.from_config(DEFAULT_SPEC.to_config()) == DEFAULT_SPEC
    assert DEFAULT_SPEC.target_sizes == {"task_type": 12, "creativity_scope": 3, "reasoning": 2,
                                         "contextual_knowledge": 2, "number_of_few_shots": 6,
                                         "domain_knowledge": 4, "no_label_reason": 1, "constraint_ct": 2}


# ---------------------------------------------------------------------------- batching
def test_plan_batches_sorts_by_length_and_caps() -> None:
    lengths = [5, 50, 7, 50, 3, 20]
    batches = plan_batches(lengths, batch_size=2)
    assert batches == [[1, 3], [5, 2], [0, 4]]
    assert sorted(i for b in batches for i in b) == list(range(6))
    capped = plan_batches(lengths, batch_size=10, max_batch_tokens=100)
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in capped)
    assert plan_batches([], 4) == []


def test_batched_equals_unbatched_and_keeps_input_order(engine: ClassifierEngine) -> None:
    batched = engine.logits(PROMPTS, batch_size=4)
    singles = [engine.logits([p], batch_size=1) for p in PROMPTS]
    for k in range(len(DEFAULT_SPEC.heads)):
        alone = torch.cat([s[k] for s in singles])
        assert torch.allclose(batched[k], alone, atol=1e-5, rtol=1e-4), DEFAULT_SPEC.heads[k].name
    results = engine.classify(PROMPTS, batch_size=4)
    reversed_results = engine.classify(PROMPTS[::-1], batch_size=3)[::-1]
    for got, rev, single in zip(results, reversed_results, (engine.classify([p])[0] for p in PROMPTS), strict=True):
        for key in OUTPUT_KEYS:
            for other in (rev, single):
                if isinstance(got[key], str):
                    assert got[key] == other[key]
                else:
                    assert math.isclose(got[key], other[key], abs_tol=2e-4), key
    assert len({r["prompt_complexity_score"] for r in results}) > 3  # outputs really differ per prompt


def test_padding_does_not_change_scores(engine: ClassifierEngine, ckpt: Path) -> None:
    wide = ClassifierEngine.from_pretrained_dir(ckpt, device="cpu", pad_to_multiple_of=128)
    tight = ClassifierEngine.from_pretrained_dir(ckpt, device="cpu", pad_to_multiple_of=None)
    for a, b in zip(wide.logits(PROMPTS, batch_size=len(PROMPTS)), tight.logits(PROMPTS, batch_size=1), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_truncation_empty_and_type_errors(engine: ClassifierEngine) -> None:
    long_prompt = "word " * 400
    assert len(engine.tokenize([long_prompt], max_length=32)[0]) == 32
    assert len(engine.classify([long_prompt], max_length=32)) == 1
    assert engine.classify([]) == []
    with pytest.raises(TypeError):
        engine.classify("not a list")  # type: ignore[arg-type]
    info = engine.info()
    assert info["model"] == TINY_MODEL_NAME and info["gpu"] == "cpu" and info["dtype"] == "float32"
    assert info["heads"] == DEFAULT_SPEC.target_sizes


# ---------------------------------------------------------------------------- loading
def test_load_round_trip_and_checkpoint_key_names(ckpt: Path, tmp_path: Path) -> None:
    loaded = PromptClassifier.from_pretrained_dir(ckpt)
    built = build_tiny_model(len(train_tokenizer()), seed=0)
    state = loaded.state_dict()
    assert {"head_0.fc.weight", "head_7.fc.bias", "backbone.encoder.rel_embeddings.weight"} <= set(state)
    assert all(torch.equal(v, state[k]) for k, v in built.state_dict().items())
    cfg = loaded.backbone.config
    assert cfg.relative_attention and cfg.pos_att_type == ["p2c", "c2p"] and not cfg.position_biased_input

    bin_dir = tmp_path / "bin"  # pytorch_model.bin instead of safetensors
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((ckpt / "config.json").read_text())
    torch.save(built.state_dict(), bin_dir / "pytorch_model.bin")
    again = PromptClassifier.from_pretrained_dir(bin_dir)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())

    torch.save({k: v for k, v in built.state_dict().items() if not k.startswith("head_3")},
               bin_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match="head_3"):
        PromptClassifier.from_pretrained_dir(bin_dir)
    with pytest.raises(FileNotFoundError):
        PromptClassifier.from_pretrained_dir(tmp_path / "absent")


def test_published_config_uses_the_deberta_v3_base_preset(tmp_path: Path) -> None:
    published = {"base_model": "microsoft/DeBERTa-v3-base", "fc_dropout": 0.2, **DEFAULT_SPEC.to_config()}
    backbone = backbone_config_for(tmp_path, published)
    assert backbone == DEBERTA_V3_BASE and backbone["position_buckets"] == 256
    with pytest.raises(ValueError, match="base_model"):
        backbone_config_for(tmp_path, {**published, "base_model": "someone/else"})


# ---------------------------------------------------------------------------- HTTP surface
def test_health_has_the_seed_format(engine: ClassifierEngine) -> None:
    body = TestClient(create_app(engine)).get("/health").json()
    assert body == {"status": "healthy", "model": TINY_MODEL_NAME, "gpu": "cpu", "service": SERVICE_NAME}
    t4 = TestClient(create_app(engine, gpu="T4")).get("/health").json()
    assert list(t4) == ["status", "model", "gpu", "service"] and t4["gpu"] == "T4"
    assert t4["service"] == "nvidia-prompt-classifier"


def test_classify_has_the_seed_format(engine: ClassifierEngine) -> None:
    client = TestClient(create_app(engine, batch_size=4))
    resp = client.post("/classify", json={"prompts": PROMPTS})
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == list(OUTPUT_KEYS)
    assert all(isinstance(v, list) and len(v) == len(PROMPTS) for v in body.values())
    assert all(isinstance(x, str) for x in body["task_type_1"] + body["task_type_2"])
    assert set(body["task_type_1"]) <= set(TASK_TYPES)
    for key in OUTPUT_KEYS[2:]:
        assert all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in body[key]), key
    assert body == to_columns(engine.classify(PROMPTS, batch_size=4))


@pytest.mark.parametrize(("payload", "status"), [
    ({}, 422),
    ({"prompts": "just one string"}, 422),
    ({"prompts": [1, 2]}, 422),
    ({"prompts": ["ok", None]}, 422),
    ({"prompts": []}, 422),
    ({"prompts": ["a", "b", "c"]}, 413),
    ({"prompts": ["x" * 101]}, 413),
])
def test_bad_input_gives_clear_4xx(engine: ClassifierEngine, payload: dict, status: int) -> None:
    client = TestClient(create_app(engine, max_prompts=2, max_prompt_chars=100))
    resp = client.post("/classify", json=payload)
    assert resp.status_code == status
    assert resp.json()["detail"]
    if payload == {"prompts": []}:
        assert resp.json()["detail"] == "prompts must contain at least one prompt"


def test_non_json_body_is_rejected(engine: ClassifierEngine) -> None:
    resp = TestClient(create_app(engine)).post("/classify", content=b"prompts=hi",
                                               headers={"Content-Type": "application/json"})
    assert resp.status_code == 422


def test_jwt_bearer_auth(engine: ClassifierEngine) -> None:
    client = TestClient(create_app(engine, authorize=hs256_authorizer(SECRET)))
    now = int(time.time())

    def token(claims: dict, key: str = SECRET) -> dict[str, str]:
        return {"Authorization": f"Bearer {jwt.encode(claims, key, algorithm='HS256')}"}

    body = {"prompts": ["hello"]}
    assert client.get("/health").status_code == 200  # no auth on /health
    assert client.post("/classify", json=body).status_code == 401
    assert client.post("/classify", json=body, headers={"Authorization": "Basic abc"}).status_code == 401
    other_key = "a-different-secret-0123456789abcdef"
    bad = client.post("/classify", json=body, headers=token({"sub": "x", "exp": now + 60}, other_key))
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
    expired = client.post("/classify", json=body, headers=token({"sub": "x", "exp": now - 60}))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    assert client.post("/classify", json=body, headers=token({"sub": "x"})).status_code == 401  # no exp
    no_subject = token({"exp": now + 60})
    assert client.post("/classify", json=body, headers=no_subject).status_code == 401
    ok = client.post("/classify", json=body,
                     headers=token({"user": "adaptive_ai", "exp": now + 60, "iat": now}))
    assert ok.status_code == 200 and len(ok.json()["task_type_1"]) == 1
