"""Synthetic chest-radiograph phantoms with reports and ground-truth finding masks.

Each phantom is a frontal (PA) chest-radiograph-like image, a free-text report that names every
finding with its side and lung zone, and one mask per finding. They give training data with known
ground truth for tests, the demo and the localization benchmark: findings are clearly visible and
their location is written in the report, so a model trained from scratch on a few thousand pairs
can learn to localize them from the text alone.

Radiology convention: images are displayed as if facing the patient, so the patient's RIGHT is on
the IMAGE LEFT (low column index). "right" in a report or a ``Finding.side`` is the patient's side.

Geometry is defined in an "anatomical frame": ``x`` from 0 (image left) to 1 (image right), ``y``
from 0 (top) to 1 (bottom). A random pose (rotation, scale, shift) maps it onto the pixel grid, and
every structure and mask is evaluated on the same mapped grid, so masks match the image exactly.

Modules, one concept each: :mod:`.anatomy` (habitus, pose grid, the rendered normal chest),
:mod:`.findings` (choice, placement, drawing and masks of findings, prompts), :mod:`.language`
(report sentences and layouts), :mod:`.generator` (one study), :mod:`.writer` (the datastore
folder) and :mod:`.cli` (``afloc-phantoms``).

Public API:
    generate_phantom(rng, size=256) -> Phantom
    write_phantom_datastore(out_dir, n, seed, size=256, overwrite=False) -> Path
    main(argv=None) -> int            (console script ``afloc-phantoms``)
"""

from afloc_training.phantoms.anatomy import SIDES, ZONES
from afloc_training.phantoms.cli import main
from afloc_training.phantoms.findings import FINDING_NAMES
from afloc_training.phantoms.generator import MAX_SIZE, MIN_SIZE, Finding, Phantom, _generate, generate_phantom
from afloc_training.phantoms.language import NEGATION_CUES
from afloc_training.phantoms.writer import (
    CSV_COLUMNS,
    FINDINGS_CSV,
    GROUND_TRUTH_DIR,
    MANIFEST_JSON,
    MASKS_DIR,
    write_phantom_datastore,
)

__all__ = [
    "CSV_COLUMNS",
    "FINDINGS_CSV",
    "FINDING_NAMES",
    "Finding",
    "GROUND_TRUTH_DIR",
    "MANIFEST_JSON",
    "MASKS_DIR",
    "MAX_SIZE",
    "MIN_SIZE",
    "NEGATION_CUES",
    "Phantom",
    "SIDES",
    "ZONES",
    "_generate",
    "generate_phantom",
    "main",
    "write_phantom_datastore",
]
