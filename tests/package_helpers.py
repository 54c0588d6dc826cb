"""A character package installed for the length of a test: its characters registered by a real pluggy plugin."""

from __future__ import annotations

from contextlib import contextmanager

from runtime.hookspecs import hookimpl


@contextmanager
def installed(engine, *characters, name: str = "test-package"):
    """The characters in the engine's catalog for the block, as an installed character package puts them there."""

    class Package:
        @hookimpl
        def register_characters(self, register):
            for character in characters:
                register(character)

    package = Package()
    engine.pm.register(package, name=name)
    try:
        engine.catalog.reload()
        yield
    finally:
        engine.pm.unregister(package)
