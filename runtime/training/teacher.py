"""A teacher model on any OpenAI-compatible endpoint ([training] teacher_url): extra candidate replies."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """Where the teacher answers and how it is asked (its key comes from the environment only)."""

    url: str
    model: str = "teacher"
    key_env: str = "PERSONAE_TEACHER_KEY"
    timeout: float = 60.0
    failures: int = 0
    answered: int = 0

    @classmethod
    def from_settings(cls, settings) -> "Teacher | None":
        """The configured teacher, or None when `[training] teacher_url` is not set."""
        table = getattr(settings, "training", None) or {}
        url = str(table.get("teacher_url") or "").rstrip("/")
        if not url:
            return None
        return cls(url=url, model=str(table.get("teacher_model") or "teacher"),
                   key_env=str(table.get("teacher_key_env") or "PERSONAE_TEACHER_KEY"),
                   timeout=float(table.get("teacher_timeout") or 60))

    def reply(self, messages: list[dict], temperature: float, max_tokens: int, seed: int = 0) -> str | None:
        """The teacher's reply to a chat (the character's prompt and history), or None if it failed."""
        import httpx

        key = os.environ.get(self.key_env, "")
        try:
            response = httpx.post(
                f"{self.url}/chat/completions", headers={"Authorization": f"Bearer {key}"} if key else {},
                json={"model": self.model, "messages": messages, "temperature": temperature,
                      "max_tokens": max_tokens, "seed": seed},
                timeout=self.timeout,
            )
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"]
        except Exception as error:  # a teacher that is down only means fewer candidates
            self.failures += 1
            log.warning("teacher at %s failed: %s", self.url, f"{type(error).__name__}: {error}"[:200])
            return None
        self.answered += 1
        return text if isinstance(text, str) else None
