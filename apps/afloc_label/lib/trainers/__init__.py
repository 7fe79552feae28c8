"""Train tasks of the AFLoc Label app."""

from lib.trainers.afloc_train import AFLocTrainTask

__all__ = ["AFLocTrainTask"]
