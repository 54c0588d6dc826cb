"""The one place that assembles an engine: settings, plugins, log, catalog, weights registry, backend."""

from __future__ import annotations

from adapters.registry import Registry
from runtime.characters.catalog import Catalog
from runtime.chat.engine import Engine
from runtime.chat.weights import WeightsManager, adopt_base
from runtime.config import ConfigError, load_settings
from runtime.plugins import get_plugin_manager
from runtime.store import Store


def backends(pm) -> dict:
    """Every generation backend plugins registered through register_backends: name -> factory(settings, base)."""
    found: dict = {}

    def register(name: str, factory) -> None:
        found.setdefault(name, factory)  # the first registration of a name wins, as with characters

    pm.hook.register_backends(register=register)
    return found


def choose_backend(settings, pm):
    """The factory of the backend `settings.backend` names; an unknown name says which exist."""
    known = backends(pm)
    if settings.backend not in known:
        raise ConfigError(f"backend {settings.backend!r} is not available (known: {', '.join(sorted(known))}); "
                          "set `backend` in personae.toml or $PERSONAE_BACKEND, or install the plugin that adds it")
    return known[settings.backend]


def build_engine(settings=None, *, pm=None, store=None, catalog=None, base=None, generator=None,
                 registry=None) -> Engine:
    """An engine over the configured data dir (the model loads, and the backend starts, on first use)."""
    settings = settings or load_settings()
    pm = pm or get_plugin_manager(settings.plugins_dir)
    store = store or Store(settings.db_path)
    catalog = catalog or Catalog(pm, settings.data_dir)
    backend = None if generator is not None else choose_backend(settings, pm)
    engine = Engine(settings, pm, store, catalog, base=base, generator=generator, backend=backend)
    registry = registry or Registry.for_settings(settings, store, pm=pm)
    if base is not None:  # already loaded: let the registry check adapters against it
        adopt_base(registry, base)
    engine.weights = WeightsManager(registry, lambda: engine.generator, lambda: engine.base)
    return engine
