"""The registry's errors: each message says what is wrong and what to do."""

from __future__ import annotations

from runtime.errors import PersonaeError


class RegistryError(PersonaeError, ValueError):
    """A registry operation that cannot be done; nothing stored was changed."""


class PickledWeights(RegistryError):
    """Weights that exist only as pickles, which are never unpickled."""


class IncompatibleAdapter(RegistryError):
    """Weights that do not fit the loaded base (fingerprint, target modules or shapes)."""


class IntegrityError(RegistryError):
    """A stored file whose size or sha256 differs from its manifest (truncated or tampered)."""
