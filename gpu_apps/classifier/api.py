"""FastAPI surface of the classifier app, in the seed's formats (seed 001).

* ``GET /health`` returns exactly ``{"status": "healthy", "model": ..., "gpu": ..., "service":
  "nvidia-prompt-classifier"}``. No authentication.
* ``POST /classify`` takes ``{"prompts": ["...", ...]}`` and returns the model card's batch
  result: ``{"task_type_1": [...], "task_type_2": [...], "task_type_prob": [...],
  "creativity_scope": [...], "reasoning": [...], "contextual_knowledge": [...],
  "number_of_few_shots": [...], "domain_knowledge": [...], "no_label_reason": [...],
  "constraint_ct": [...], "prompt_complexity_score": [...]}``. There is one list element per
  prompt, in request order. The adaptive_ai client of the seed reads this layout.

The seed protects ``/classify`` with an HS256 JWT bearer token (``sub`` or ``user``, ``exp``,
``iat``). Pass ``authorize=hs256_authorizer(secret)`` to :func:`create_app` to turn that on, or
any callable that maps a bearer token to a subject and raises ``ValueError`` when the token is bad.

Errors: a body that is not ``{"prompts": [str, ...]}`` gets 422 (FastAPI validation). An empty
``prompts`` list gets 422 with a clear message, as the seed's ``min_length=1`` did. Too many
prompts or an over-long prompt gets 413. A missing or bad token gets 401.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field, StrictStr

from .postprocess import to_columns

SERVICE_NAME = "nvidia-prompt-classifier"
DEFAULT_MAX_PROMPTS = 10_000
DEFAULT_MAX_PROMPT_CHARS = 100_000


class Engine(Protocol):
    """What the app needs from :class:`gpu_apps.classifier.engine.ClassifierEngine`."""

    model_name: str

    def classify(self, prompts: list[str], batch_size: int = ...,
                 max_length: int = ...) -> list[dict[str, Any]]:
        """Per-prompt results in input order."""

    def info(self) -> dict[str, Any]:
        """Model/device description, with a ``gpu`` key."""


class ClassifyRequest(BaseModel):
    """The seed's request body."""

    prompts: list[StrictStr] = Field(description="Prompts to classify (at least one).")


def hs256_authorizer(secret: str, leeway_s: float = 0.0) -> Callable[[str], str]:
    """Verify the seed's HS256 JWTs: signature, ``exp`` required, subject from ``sub`` or ``user``."""
    if not secret:
        raise ValueError("JWT secret must not be empty")
    import jwt

    def authorize(token: str) -> str:
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=leeway_s,
                                options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise ValueError("token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise ValueError(f"invalid token: {exc}") from None
        subject = claims.get("sub") or claims.get("user")
        if not isinstance(subject, str) or not subject:
            raise ValueError("invalid token: no sub or user claim")
        return subject

    return authorize


def create_app(engine: Engine, *, gpu: str | None = None, authorize: Callable[[str], str] | None = None,
               batch_size: int = 256, max_length: int = 512, max_prompts: int = DEFAULT_MAX_PROMPTS,
               max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> FastAPI:
    """The classifier's FastAPI app. ``gpu`` overrides the accelerator name shown by ``/health``."""
    app = FastAPI(title="NVIDIA Prompt Classifier API", version="1.0.0",
                  description="Prompt task type and complexity classification (seed 001 formats).")
    gpu_name = gpu if gpu is not None else str(engine.info().get("gpu", "cpu"))

    def check_auth(authorization: str | None) -> None:
        if authorize is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            authorize(token.strip())
        except ValueError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None

    @app.get("/health")
    def health() -> dict[str, str]:
        """Service status and model information (no authentication)."""
        return {"status": "healthy", "model": engine.model_name, "gpu": gpu_name, "service": SERVICE_NAME}

    @app.post("/classify")
    def classify(body: ClassifyRequest,
                 authorization: str | None = Header(default=None)) -> dict[str, list[Any]]:
        """Classify prompts; one list element per prompt in every field (sync: runs in the threadpool)."""
        check_auth(authorization)
        prompts = body.prompts
        if not prompts:
            raise HTTPException(422, "prompts must contain at least one prompt")
        if len(prompts) > max_prompts:
            raise HTTPException(413, f"too many prompts: {len(prompts)} > {max_prompts} per request")
        for i, p in enumerate(prompts):
            if len(p) > max_prompt_chars:
                raise HTTPException(413, f"prompts[{i}] is too long: {len(p)} > {max_prompt_chars} "
                                         "characters")
        results = engine.classify(prompts, batch_size=batch_size, max_length=max_length)
        return to_columns(results)

    return app
