"""How the Discord plugin names itself and its users in the log."""

from __future__ import annotations

PLATFORM = "discord"


def user_key(user) -> str:
    """The store's id for a Discord user."""
    return f"{PLATFORM}:{user.id if hasattr(user, 'id') else user}"
