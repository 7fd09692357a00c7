"""Finding destination plugins: entry points, loaded lazily at task run time.

DAG files only name a destination (``"twenty"``); the plugin module, its hook and its HTTP client are
imported when a task runs, never while the scheduler parses DAGs. Mistyped hook implementations fail
at load (``check_pending``), not halfway through a migration.
"""

from __future__ import annotations

import os
import threading

import pluggy

from airflow_ascora_provider.destinations import spec
from airflow_ascora_provider.destinations.spec import PROJECT, Destination

ENTRY_POINT_GROUP = "airflow_ascora_provider.destinations"
LOAD_ENV = "ASCORA_LOAD_DESTINATIONS"  # comma-separated allow-list of entry-point names

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: dict[str, type[Destination]] = {}


class UnknownDestination(KeyError):
    pass


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    with _lock:
        if _pm is not None:
            return _pm
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(spec)
        allowed = {n.strip() for n in os.environ.get(LOAD_ENV, "").split(",") if n.strip()}
        if allowed:
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in allowed and pm.get_plugin(ep.name) is None:
                    pm.register(ep.load(), name=ep.name)
        else:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        pm.check_pending()
        registry: dict[str, type[Destination]] = {}

        def register(cls: type[Destination]) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Destination)):
                raise TypeError(f"register() takes a Destination subclass, got {cls!r}")
            if cls.name in registry and registry[cls.name] is not cls:
                raise ValueError(f"two plugins register the destination {cls.name!r}")
            registry[cls.name] = cls

        pm.hook.register_destinations(register=register)
        _registry.clear()
        _registry.update(registry)
        _pm = pm
        return pm


def register_plugin(module, name: str | None = None) -> None:
    """Register a plugin object by hand (tests, notebooks) on top of the entry points."""
    pm = get_plugin_manager()
    pm.register(module, name=name)
    pm.check_pending()
    module.register_destinations(register=lambda cls: _registry.__setitem__(cls.name, cls))


def destinations() -> dict[str, type[Destination]]:
    get_plugin_manager()
    return dict(_registry)


def get_destination_class(name: str) -> type[Destination]:
    available = destinations()
    try:
        return available[name]
    except KeyError:
        raise UnknownDestination(
            f"no destination plugin named {name!r}; installed: {', '.join(sorted(available)) or 'none'}"
        ) from None


def get_destination(name: str, conn_id: str | None = None, **options) -> Destination:
    return get_destination_class(name)(conn_id, **options)


def reset() -> None:
    """Forget loaded plugins (tests)."""
    global _pm
    with _lock:
        _pm = None
        _registry.clear()
