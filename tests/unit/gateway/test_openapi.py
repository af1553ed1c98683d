"""/openapi.json describes the bodies the routes parse themselves, from the models that validate them."""

from __future__ import annotations

import json
import re
from typing import Any

from core import schemas as p
from core.config import Config
from gateway.app import create_app
from gateway.keys.fields import KeyDelete, KeyFields, KeyUpdate


def _document() -> dict[str, Any]:
    return create_app(Config.model_validate({"gatehouse": {"expose_docs": True}}), "m" * 32).openapi()


def test_every_post_declares_its_body() -> None:
    paths = _document()["paths"]
    posts = {path: item["post"] for path, item in paths.items() if "post" in item}
    assert set(posts) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/generate", "/v1/classify",
                          "/classify", "/key/generate", "/key/update", "/key/delete", "/v1/files", "/v1/batches",
                          "/v1/batches/{batch_id}/cancel", "/v1/benchmarks",
                          "/v1/benchmarks/{benchmark_id}/cancel", "/v1/responses",
                          "/v1/responses/{response_id}/cancel"}  # not the aliases
    for cancel in ("/v1/batches/{batch_id}/cancel", "/v1/benchmarks/{benchmark_id}/cancel",
                   "/v1/responses/{response_id}/cancel"):
        assert "requestBody" not in posts.pop(cancel)  # the id is the whole request
    for path, op in posts.items():
        assert op["requestBody"]["required"] is True, path
        assert ("multipart/form-data" if path == "/v1/files" else "application/json") in op["requestBody"]["content"]
    schema = posts["/v1/chat/completions"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["title"] == "ChatCompletionRequest" and {"model", "messages"} <= set(schema["required"])
    assert schema["properties"]["temperature"]["anyOf"][0]["maximum"] == 2.0
    forms = posts["/generate"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [f["title"] for f in forms] == ["GenerateRequest", "QuantumGenerateRequest"]
    for path, model in (("/key/generate", KeyFields), ("/key/update", KeyUpdate), ("/key/delete", KeyDelete)):
        body = posts[path]["requestBody"]["content"]["application/json"]["schema"]
        assert body["title"] == model.__name__ and set(body["properties"]) == set(model.model_fields)
    assert p.CompletionRequest.__name__ == posts["/v1/completions"]["requestBody"]["content"][
        "application/json"]["schema"]["title"]


def test_references_resolve_and_errors_are_documented_as_sent() -> None:
    doc = _document()
    text = json.dumps(doc)
    assert "$defs" not in text and "HTTPValidationError" not in text
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in doc["components"]["schemas"], ref
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], (method, path)  # the gateway answers 400, OpenAI-style
    assert doc["paths"]["/key/list"]["get"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/health/ready"]["get"]["security"] == []


def test_no_document_without_expose_docs() -> None:
    app = create_app(Config.model_validate({}), "m" * 32)
    assert app.openapi_url is None
