"""Which weights answer: one value type for 'pixel', 'pixel@3' and 'pixel@base', parsed and printed here only."""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.errors import PersonaeError

BASE = "base"
_VERSION = re.compile(r"^(?:\d+|base)$")


class BadWeightsRef(PersonaeError):
    """A weights reference that is not NAME, NAME@NUMBER or NAME@base."""


@dataclass(frozen=True)
class WeightsRef:
    """A character's weights: its active version (version None), a numbered version, or the bare base."""

    character: str
    version: int | str | None = None  # None = the active version; an int; or "base"

    @classmethod
    def parse(cls, text: str, character: str | None = None) -> "WeightsRef":
        """'pixel' / 'pixel@3' / 'pixel@base'; with `character` given, text may be only the version ('3', 'base')."""
        text = str(text).strip()
        if character is not None and "@" not in text:
            name, version = character, text
        else:
            name, _, version = text.partition("@")
            if character is not None and name != character:
                raise BadWeightsRef(f"{text!r} names {name!r}, not {character!r}")
        name, version = name.strip(), version.strip()
        if not name:
            raise BadWeightsRef(f"{text!r}: a weights reference starts with the character, as in pixel@3")
        if "@" in text and not version or version and not _VERSION.match(version):
            raise BadWeightsRef(f"{text!r}: a version is a number or 'base', as in {name}@3 or {name}@base")
        if not version:
            return cls(name)
        return cls(name, BASE if version == BASE else int(version))

    @property
    def is_base(self) -> bool:
        """The bare base model, whatever the registry holds."""
        return self.version == BASE

    @property
    def is_active(self) -> bool:
        """Whatever version is active when the turn runs."""
        return self.version is None

    def with_character(self, character: str) -> "WeightsRef":
        """The same version for a character id (a display name resolved to its id)."""
        return WeightsRef(character, self.version)

    def __str__(self) -> str:
        return self.character if self.version is None else f"{self.character}@{self.version}"
