"""msrepro's registries, one per kind of component, and the experiment registry (``experiments/*.yaml``).

Register with a decorator::

    from msrepro.registry import CLUSTERERS

    @CLUSTERERS.register("my_clusterer")
    class MyClusterer: ...

and make it visible to msrepro from an outside package with an entry point in its ``pyproject.toml``::

    [project.entry-points."msrepro.clusterers"]
    my_clusterer = "my_package.clusterers"
"""

from .registry import (
    Entry,
    PluginFailure,
    Registry,
    RegistryError,
    ensure_loaded,
    get_registry,
    new_registry,
    plugin_failures,
    registries,
)

BACKBONES = new_registry("backbones")
CLUSTERERS = new_registry("clusterers")
DATASETS = new_registry("datasets")
SAMPLERS = new_registry("samplers")
METRICS = new_registry("metrics")
STAGE_POLICIES = new_registry("stage_policies")
SCHEDULES = new_registry("schedules")
NOISE_DENSITIES = new_registry("noise_densities")

__all__ = [
    "BACKBONES",
    "CLUSTERERS",
    "DATASETS",
    "METRICS",
    "NOISE_DENSITIES",
    "SAMPLERS",
    "SCHEDULES",
    "STAGE_POLICIES",
    "Entry",
    "PluginFailure",
    "Registry",
    "RegistryError",
    "ensure_loaded",
    "get_registry",
    "new_registry",
    "plugin_failures",
    "registries",
]
