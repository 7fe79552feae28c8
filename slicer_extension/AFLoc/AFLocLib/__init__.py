"""AFLocLib: everything the AFLoc Slicer module does that needs no Slicer.

- :mod:`.client` talks HTTP to the AFLoc Label server (MONAI Label REST API),
- :mod:`.prompts` splits prompt text, keeps a history and offers quick picks,
- :mod:`.terminology` codes findings with SNOMED CT in Slicer's terminology format,
- :mod:`.segmentation` and :mod:`.nrrd_io` convert results to and from ``.seg.nrrd``,
- :mod:`.threshold` re-thresholds heatmaps locally,
- :mod:`.workflow` chains them into the steps the module's buttons run.

Only the standard library and numpy are imported (both ship with Slicer), never ``slicer``.
"""

from .cancel import CancelToken
from .client import (
    DEFAULT_MODEL,
    DEFAULT_TRAINER,
    DRAFT_TAG,
    FINAL_TAG,
    HEATMAP_TAG,
    AFLocClient,
    FindingResult,
    InferResult,
    ServerInfo,
    TrainingStatus,
    image_id_for,
)
from .errors import (
    AFLocClientError,
    AuthenticationRequiredError,
    ConsentRequiredError,
    NotAFLocServerError,
    OperationCancelledError,
    PromptInputError,
    ResultFormatError,
    ServerError,
    ServerUnreachableError,
)
from .prompts import QUICK_PICKS, PromptHistory, add_quick_pick, join_prompts, split_prompts
from .segmentation import Segment, Segmentation, build_draft, read_segmentation, unique_name, write_segmentation
from .terminology import terminology_entry, write_terminology_context
from .threshold import combined_labels, threshold_heatmap

__all__ = [
    "AFLocClient",
    "AFLocClientError",
    "AuthenticationRequiredError",
    "CancelToken",
    "ConsentRequiredError",
    "DEFAULT_MODEL",
    "DEFAULT_TRAINER",
    "DRAFT_TAG",
    "FINAL_TAG",
    "FindingResult",
    "HEATMAP_TAG",
    "InferResult",
    "NotAFLocServerError",
    "OperationCancelledError",
    "PromptHistory",
    "PromptInputError",
    "QUICK_PICKS",
    "ResultFormatError",
    "Segment",
    "Segmentation",
    "ServerError",
    "ServerInfo",
    "ServerUnreachableError",
    "TrainingStatus",
    "add_quick_pick",
    "build_draft",
    "combined_labels",
    "image_id_for",
    "join_prompts",
    "read_segmentation",
    "split_prompts",
    "terminology_entry",
    "threshold_heatmap",
    "unique_name",
    "write_segmentation",
    "write_terminology_context",
]
