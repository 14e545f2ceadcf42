"""Timestep clusterers (paper Sec. 4.2, Table 4): one signature, ``fit(schedule, inputs, k) -> ClusterResult``.

Built-ins, registered in ``CLUSTERERS``: ``timestep`` and ``snr`` (data-free baselines), ``gradient`` (task
affinity of loss gradients of a denoiser network), ``optimal_denoiser`` (Algorithm 1 and the official
interval objective). Outside packages add their own through the ``msrepro.clusterers`` entry-point group.
"""

from msrepro.clustering.base import Clusterer
from msrepro.clustering.inputs import ClusterInputs
from msrepro.clustering.plots import save_result
from msrepro.clustering.result import ClusterResult

__all__ = ["ClusterInputs", "ClusterResult", "Clusterer", "build_clusterer", "check_cluster_config", "fit_from_config"]


def build_clusterer(name: str, params=None) -> Clusterer:
    """The registered clusterer ``name`` built from ``params`` (validated against its Config at once)."""
    from msrepro.registry import CLUSTERERS

    return CLUSTERERS.get(name)(params)


def check_cluster_config(cfg) -> Clusterer:
    """The run config's clusterer, checked (options, and k = ``stages.num_stages``) before any work; ConfigError."""
    from omegaconf import OmegaConf

    clusterer = build_clusterer(cfg.cluster.name, OmegaConf.to_container(cfg.cluster.params, resolve=True))
    clusterer.check_k(int(cfg.stages.num_stages), "stages.num_stages")
    return clusterer


def fit_from_config(cfg, checkpoints=(), out_dir=None, progress: bool = True) -> ClusterResult:
    """Run the ``cluster`` section of a resolved run config (the job graph's cluster step).

    Clusterer ``cfg.cluster.name`` with ``cfg.cluster.params``, on ``cfg.cluster.schedule`` (default: the run's
    schedule), k = ``cfg.stages.num_stages``, data = ``cfg.dataset``, seed and device from the run; the result is
    saved to ``out_dir`` (JSON + plots) when given, ready for ``stages.from_result``.
    """
    from omegaconf import OmegaConf

    from msrepro.schedules import build_schedule

    clusterer = check_cluster_config(cfg)
    schedule = build_schedule({"name": cfg.cluster.schedule} if cfg.cluster.schedule
                              else OmegaConf.to_container(cfg.schedule, resolve=True))
    inputs = ClusterInputs(dataset=OmegaConf.to_container(cfg.dataset, resolve=True), checkpoints=list(checkpoints),
                           run_config=cfg, device=cfg.device, seed=cfg.seed, progress=progress)
    result = clusterer.fit(schedule, inputs, int(cfg.stages.num_stages))
    if out_dir is not None:
        save_result(result, out_dir)
    return result
