"""Optional parts: files installed packages carry (found without importing them) and optional runtime modules."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, or None; the package itself is never imported."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def capability(module: str, attribute: str):
    """An attribute of an optional runtime module, or None when that capability isn't installed."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), attribute, None)
    except ImportError:
        return None
