"""Who is calling: the identity every service call acts for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """An authenticated caller, resolved from an API key or the local single-user mode.

    ``organization_id`` scopes every query the call makes; ``is_admin`` allows
    AdminService, which manages every organization.
    """

    organization_id: str
    user_id: str
    is_admin: bool = False
    api_key_id: str | None = None
