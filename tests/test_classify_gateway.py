"""The classifier seed's /classify through the gateway's queue: in-process engine and remote seed service."""

from __future__ import annotations

import httpx
import openai
import pytest

PROMPTS = ["Write a Python script that uses a for loop.", "Summarise this article in two sentences please",
           "hi"]


def post(stack, path: str, body: dict) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(stack.base_url + path, json=body, timeout=60,
                      headers={"authorization": f"Bearer {stack.master_key}"})


def test_classify_in_the_seed_format(stack, classifier_service) -> None:  # type: ignore[no-untyped-def]
    from gpu_apps.classifier.engine import ClassifierEngine
    from gpu_apps.classifier.postprocess import to_columns

    r = post(stack, "/v1/classify", {"prompts": PROMPTS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert {"task_type_1", "task_type_2", "task_type_prob", "prompt_complexity_score"} <= set(out)
    assert all(len(v) == len(PROMPTS) for v in out.values())
    expected = to_columns(ClassifierEngine.from_pretrained_dir(classifier_service.checkpoint).classify(PROMPTS))
    assert out == expected
    assert post(stack, "/classify", {"prompts": PROMPTS}).json() == out  # the seed's path, same answer


def test_remote_classifier_service_gives_the_same_answer(stack) -> None:  # type: ignore[no-untyped-def]
    local = post(stack, "/v1/classify", {"prompts": PROMPTS}).json()
    remote = post(stack, "/v1/classify", {"prompts": PROMPTS, "model": "classifier-remote"})
    assert remote.status_code == 200, remote.text  # the gateway minted the seed's JWT for the service
    assert remote.json() == local


@pytest.mark.parametrize("body, param", [({"prompts": []}, "prompts"), ({"prompts": "one"}, "prompts"),
                                         ({}, "prompts")])
def test_bad_classify_bodies(stack, body: dict, param: str) -> None:  # type: ignore[no-untyped-def]
    r = post(stack, "/v1/classify", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_a_classifier_is_not_a_chat_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="prompt-classifier", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "unsupported_endpoint"
