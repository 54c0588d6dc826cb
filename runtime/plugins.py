"""The plugin manager: entry points, the plugins directory, then the built-ins."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pluggy

from runtime import hookspecs
from runtime.config import load_settings
from runtime.errors import PersonaeError

# Built-in plugins are ordinary modules using the public hookimpl, registered last.
BUILTIN_PLUGINS = (
    "plugins.characters",
    "plugins.console",
    "plugins.discord",
    "plugins.http",
    "plugins.audit",
    "plugins.local",
    "plugins.vllm",
    "plugins.llamacpp",
)

_manager: pluggy.PluginManager | None = None
# Problems met while loading plugins: (plugin, message). Reported by `personae plugins`.
load_errors: list[tuple[str, str]] = []


def _report(name: str, error: BaseException) -> None:
    """Tell the user about a broken plugin without stopping the rest."""
    message = f"{type(error).__name__}: {error}"
    load_errors.append((name, message))
    print(f"personae: plugin {name!r} failed to load and was skipped ({message})", file=sys.stderr)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load third-party plugins one at a time so one broken package can't stop the others."""
    for entry_point in importlib.metadata.entry_points(group="personae"):
        try:
            module = entry_point.load()
            pm.register(module, name=entry_point.name)
        except Exception as error:  # a plugin may fail in any way; none is fatal
            _report(entry_point.name, error)


def _load_plugins_dir(pm: pluggy.PluginManager, folder: str) -> None:
    """Load every .py file of the plugins directory as a plugin."""
    if not folder:
        return
    for path in sorted(Path(folder).expanduser().glob("*.py")):
        name = f"personae_plugins_dir.{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            pm.register(module, name=str(path))
        except Exception as error:
            _report(str(path), error)


def _load_builtins(pm: pluggy.PluginManager) -> None:
    """Register the built-in plugins that are importable (a missing optional one is skipped)."""
    for name in BUILTIN_PLUGINS:
        if pm.get_plugin(name) is not None:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:  # not built yet / not installed: not an error
                continue
            _report(name, error)
            continue
        except Exception as error:
            _report(name, error)
            continue
        pm.register(module, name=name)


def get_plugin_manager(plugins_dir: str | None = None, reload: bool = False) -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    if _manager is not None and not reload:
        return _manager
    if plugins_dir is None:
        plugins_dir = load_settings().plugins_dir
    load_errors.clear()
    pm = pluggy.PluginManager("personae")
    pm.add_hookspecs(hookspecs)
    _load_entry_points(pm)
    _load_plugins_dir(pm, plugins_dir)
    _load_builtins(pm)
    pm.check_pending()
    _manager = pm
    return pm


def plugin_summaries(pm: pluggy.PluginManager) -> list[dict]:
    """Name, hooks and version of every loaded plugin, for `personae plugins`."""
    distributions = {module: dist for module, dist in pm.list_plugin_distinfo()}
    rows = []
    for plugin in pm.get_plugins():
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        dist = distributions.get(plugin)
        rows.append(
            {
                "name": pm.get_name(plugin),
                "hooks": hooks,
                "version": dist.version if dist else None,
            }
        )
    return sorted(rows, key=lambda row: row["name"])


class ForgetIncomplete(PersonaeError):
    """The log forgot a user, but a plugin failed to delete its own data about them."""


def forget_user(store, user_id: str, pm: pluggy.PluginManager | None = None) -> dict:
    """Forget a user everywhere: the log's messages and feedback, then every plugin's data (user_forgotten)."""
    counts = store.forget_user(user_id)
    pm = pm or get_plugin_manager()
    try:
        pm.hook.user_forgotten(user_id=user_id, store=store)
    except Exception as error:  # a plugin's bug: the user must learn their data is not all gone yet
        raise ForgetIncomplete(
            f"the log's messages and feedback of {user_id!r} were deleted, but a plugin failed to delete its own "
            f"data about them ({type(error).__name__}: {error}); fix or remove that plugin (see `personae plugins`) "
            "and run the forget again"
        ) from error
    return counts
