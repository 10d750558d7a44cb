"""Scopes: who a memory belongs to. Every read and write names one."""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel, ConfigDict, field_validator

from memsdk.encoding import lone_surrogate

__all__ = ["Scope"]

MAX_SCOPE_PART = 256


class Scope(BaseModel):
    """The owner of memories: a tenant, and optionally a user, an agent and a run inside it.

    Scopes are partitions: a read sees exactly the memories written with an equal scope, so
    ``Scope(tenant="acme")`` does not see what ``Scope(tenant="acme", user="u1")`` wrote. Any
    printable text is allowed in each part (path separators and quotes included: scope values
    never reach a file path or an unparameterised SQL string).

    Raises:
        pydantic.ValidationError: (a ``ValueError``) a part is empty, too long, not a string,
            or holds control characters or a lone surrogate (U+D800..U+DFFF).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str
    user: str | None = None
    agent: str | None = None
    run: str | None = None

    @field_validator("tenant", "user", "agent", "run")
    @classmethod
    def _check_part(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError('must be a non-empty string (leave the field out instead of "")')
        if len(value) > MAX_SCOPE_PART:
            raise ValueError(f"is {len(value)} characters long, at most {MAX_SCOPE_PART} allowed")
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise ValueError("holds control characters (such as NUL or newline): remove them")
        index = lone_surrogate(value)
        if index is not None:
            raise ValueError(
                f"holds the lone surrogate U+{ord(value[index]):04X} at index {index}, which is "
                "not text and has no UTF-8 encoding: remove it"
            )
        return value

    def key(self) -> tuple[str, str, str, str]:
        """The scope as stored: ``(tenant, user, agent, run)`` with "" for unset parts."""
        return (self.tenant, self.user or "", self.agent or "", self.run or "")

    def __str__(self) -> str:
        parts = [f"tenant={self.tenant!r}"]
        parts += [
            f"{n}={v!r}"
            for n, v in (("user", self.user), ("agent", self.agent), ("run", self.run))
            if v is not None
        ]
        return "Scope(" + ", ".join(parts) + ")"
