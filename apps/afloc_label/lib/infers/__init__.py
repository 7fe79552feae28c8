"""Infer tasks of the AFLoc Label app."""

from lib.infers.classify import AFLocClassifyTask
from lib.infers.localize import AFLocLocalizeTask

__all__ = ["AFLocClassifyTask", "AFLocLocalizeTask"]
