"""External localization test sets: images the training generator has never produced.

The training phantoms (``afloc_training.phantoms``) teach the model one way of drawing a chest.
A model can score well on fresh phantoms by learning that drawing rather than the findings. This
package builds test sets that share **no rendering code** with the training generator (nothing here
imports ``afloc_training``; a test checks it), so their numbers measure generalization:

- :mod:`.synthetic`: an independently written radiograph simulator. Anatomy is built in
  millimetres (spline lung outlines, two-chamber heart, tube-shaped ribs and vessels, scapulae,
  breasts, arms), projected through a body thickness model (Beer-Lambert attenuation), exposed with
  Poisson quantum noise and scatter, processed like a CR/DR console (windowing, unsharp masking,
  tone curve), with devices (ECG leads, tubes, lines, pacemakers), side markers and burned-in text,
  varied patient positioning and field of view, and files stored as 8-bit PNG or DICOM
  (MONOCHROME1 and MONOCHROME2). Lesions have their own appearance (lobulated and spiculated
  nodules and masses, consolidation with air bronchograms, meniscus effusions, pneumothorax with a
  visceral pleural line, lobar and discoid atelectasis, bat-wing edema with Kerley lines).
- :mod:`.inserted`: lesions inserted into real radiographs (the shared ``cxr-notes`` images and the
  pydicom-data CR ``RG1_UNCI.dcm``) inside an estimated lung field: real anatomy, known masks.
- :mod:`.writer`: writes either set in the phantom datastore layout (``ground_truth/findings.csv``
  plus mask PNGs), which ``afloc-eval`` and ``benchmarks/quality.py`` read; CLI
  ``python -m afloc_models.evaluation.external``.

Findings and categories are the training set's seven (opacity, nodule, effusion, pneumothorax,
atelectasis, cardiomegaly, edema); prompts use the words of real reports ("right lower lobe
consolidation", "left pleural effusion", "right apical pneumothorax").
"""

from afloc_models.evaluation.external.language import FINDINGS
from afloc_models.evaluation.external.synthetic import ExternalCase, ExternalFinding, generate_case

__all__ = ["FINDINGS", "ExternalCase", "ExternalFinding", "generate_case"]
