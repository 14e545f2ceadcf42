"""Timestep clusterers (paper Sec. 4.2, Table 4): one signature, ``fit(schedule, inputs, k) -> ClusterResult``.

Built-ins, registered in ``CLUSTERERS``: ``timestep`` and ``snr`` (data-free baselines), ``gradient`` (task
affinity of loss gradients of a denoiser network), ``optimal_denoiser`` (Algorithm 1 and the official
interval objective). Outside packages add their own through the ``msrepro.clusterers`` entry-point group.
"""

from msrepro.clustering.base import Clusterer
from msrepro.clustering.inputs import ClusterInputs
from msrepro.clustering.result import ClusterResult

__all__ = ["ClusterInputs", "ClusterResult", "Clusterer", "build_clusterer"]


def build_clusterer(name: str, params=None) -> Clusterer:
    """The registered clusterer ``name`` built from ``params`` (validated against its Config at once)."""
    from msrepro.registry import CLUSTERERS

    return CLUSTERERS.get(name)(params)
