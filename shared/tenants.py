"""Tenants: who a job belongs to.

Every job belongs to one tenant, the tenant of the API key that submitted it. Until keys
exist (or with authentication disabled) everything belongs to :data:`DEFAULT_TENANT`.
Tenant names appear in Redis key names, so they are restricted to a safe alphabet.
"""

from __future__ import annotations

import re

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_tenant_name(name: str) -> str:
    """``name`` if it is a valid tenant name, else ValueError saying what is allowed."""
    if not TENANT_NAME.fullmatch(name):
        raise ValueError("a tenant name is 1-63 characters: lowercase letters, digits, "
                         "'-' and '_', starting with a letter or digit")
    return name
