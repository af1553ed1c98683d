"""The admin API's request bodies (``/key/generate``, ``/key/update``, ``/key/delete``), bounded at the door.

Every value must fit where it goes, or the request is a 400 naming the field (never a database error, a 500):

- limits (``rpm_limit``, ``tpm_limit``, ``max_parallel_requests``) fit the ``integer`` columns;
- ``max_budget`` is finite and fits ``numeric(18, 6)`` (below 1e12; at most ``MAX_BUDGET``);
- durations are at most 100 years (core.durations), ``expires`` a date PostgreSQL and Python both hold;
- no string holds a NUL character (PostgreSQL's ``text`` and ``jsonb`` cannot store one), however deep in
  ``metadata``; ``metadata`` is at most ``MAX_METADATA_BYTES`` of JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.durations import DURATION_PATTERN, parse_duration
from gateway.errors import InvalidRequest

INT4_MAX = 2**31 - 1  # PostgreSQL integer
MAX_BUDGET = 1e11  # numeric(18, 6) holds less than 1e12; a budget past $100 billion is a typo
MAX_TEXT = 256
MAX_MODELS = 1000
MAX_METADATA_BYTES = 65_536
NUL = "\x00"

DURATION_DOC: dict[str, Any] = {"pattern": DURATION_PATTERN, "examples": ["30d", "1h"]}  # at most 36500d
Limit = Annotated[int, Field(ge=0, le=INT4_MAX)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


def nul_at(value: Any, path: str) -> str | None:
    """Where ``value`` (a JSON value) holds a NUL character, as ``path`` extended (``.key``, ``[i]``); or None."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if NUL in k:
                return f"a key of {path}"
            found = nul_at(v, f"{path}.{k}")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = nul_at(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def text_param(value: str | None, param: str) -> str | None:
    """A query parameter stored or compared as text: bounded, without NUL (400 naming it otherwise)."""
    if value is not None and (NUL in value or len(value) > MAX_TEXT):
        raise InvalidRequest(f"Invalid value for '{param}': at most {MAX_TEXT} characters, and no NUL (\\u0000).",
                             param=param, code="invalid_value")
    return value


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="ignore")  # LiteLLM clients send fields we do not implement

    models: list[Text] | None = Field(default=None, max_length=MAX_MODELS)
    key_alias: Text | None = None
    user_id: Text | None = None
    team_id: Text | None = None
    max_budget: float | None = Field(default=None, ge=0, le=MAX_BUDGET, allow_inf_nan=False)
    budget_duration: str | None = Field(default=None, max_length=64, json_schema_extra=DURATION_DOC)
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    metadata: dict[str, Any] | None = None
    expires: datetime | None = None
    duration: str | None = Field(default=None, max_length=64, json_schema_extra=DURATION_DOC)  # expires this
    # long after creation (LiteLLM's)
    is_admin: bool | None = None  # Gatehouse: the key may call the admin API (master key only)

    @field_validator("models", "key_alias", "user_id", "team_id", "budget_duration", "duration", "metadata")
    @classmethod
    def _no_nul(cls, v: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        where = nul_at(v, name)
        if where is not None:
            raise ValueError("must not contain NUL (\\u0000) characters" + (f" (found in {where})" if where != name
                                                                            else ""))
        return v

    @field_validator("budget_duration", "duration")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        try:
            size = len(orjson.dumps(v))
        except orjson.JSONEncodeError:
            raise ValueError("is nested too deeply") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is {size} bytes of JSON; at most {MAX_METADATA_BYTES} are allowed")
        return v

    @field_validator("expires")
    @classmethod
    def _expires(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        try:  # no timezone: UTC
            return (v if v.tzinfo is not None else v.replace(tzinfo=UTC)).astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range") from None

    def columns(self) -> dict[str, Any]:
        out = self.model_dump(exclude_unset=True, exclude={"expires", "duration"})
        if out.get("models") == []:  # LiteLLM: an empty list means every model
            out["models"] = None
        if "is_admin" in out and out["is_admin"] is None:  # null: not set (the column has no "unknown")
            del out["is_admin"]
        if self.duration is not None:
            out["expires_at"] = datetime.now(UTC) + parse_duration(self.duration)
        elif "expires" in self.model_fields_set:
            out["expires_at"] = self.expires
        return out


class KeyUpdate(KeyFields):
    key: str = Field(max_length=512)


class KeyDelete(BaseModel):
    model_config = ConfigDict(extra="ignore")
    keys: list[Annotated[str, Field(max_length=512)]] = Field(min_length=1, max_length=1000)
