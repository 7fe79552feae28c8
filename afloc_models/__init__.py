"""AFLoc: annotation-free pathology localization (model, losses, inference). Pure PyTorch."""

from afloc_models.errors import (  # noqa: F401
    AFLocError,
    CheckpointError,
    ConfigError,
    EmptyReportError,
    ImageReadError,
    PromptError,
)

__version__ = "0.1.0"
