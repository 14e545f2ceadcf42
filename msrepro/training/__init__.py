"""Training: noise-level densities, stage policies and the resumable, preemptible, data-parallel engine.

    from msrepro.training import train
    from msrepro.runconfig import load_config
    result = train(load_config([], ["model.preset=smoke", "name=demo"]))   # -> TrainResult
"""

from msrepro.training.loop import TrainResult, train
from msrepro.training.signals import Preempted
from msrepro.training.state import latest_checkpoint, list_checkpoints

__all__ = ["Preempted", "TrainResult", "latest_checkpoint", "list_checkpoints", "train"]
