"""The one trainer, checkpoints, run directories and distributed launch."""

from dgm.runs import Run, load, open_run
from dgm.train.trainer import TrainResult, train

__all__ = ["train", "TrainResult", "Run", "open_run", "load"]
