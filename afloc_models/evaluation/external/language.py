"""Prompts and reports of the external test sets, written apart from the training phantoms' templates.

Locations use lobes and lung regions the way clinical reports do ("right lower lobe", "left mid
lung", "right apex"), not the training generator's zone wording.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["FINDINGS", "prompt_for", "report_for"]

#: The seven finding categories (the training set's names, so per-finding tables line up).
FINDINGS = ("opacity", "nodule", "effusion", "pneumothorax", "atelectasis", "cardiomegaly", "edema")

_REGION = {
    ("right", "upper"): ("right upper lobe", "right upper lung"),
    ("right", "middle"): ("right middle lobe", "right mid lung"),
    ("right", "lower"): ("right lower lobe", "right lung base"),
    ("left", "upper"): ("left upper lobe", "left upper lung"),
    ("left", "middle"): ("left mid lung", "left perihilar region"),
    ("left", "lower"): ("left lower lobe", "left lung base"),
}


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def prompt_for(rng: np.random.Generator, name: str, side: Optional[str], zone: Optional[str], variant: str) -> str:
    """A short prompt naming the finding and its place, as a radiologist would type it."""
    region = _REGION[(side, zone)][0] if side in ("right", "left") and zone else ""
    if name == "opacity":
        return f"{region} {_choice(rng, ('consolidation', 'airspace opacity', 'pneumonia'))}"
    if name == "nodule":
        return f"{region} {'mass' if variant == 'mass' else 'nodule'}"
    if name == "effusion":
        return "bilateral pleural effusions" if side == "bilateral" else f"{side} pleural effusion"
    if name == "pneumothorax":
        return f"{side} apical pneumothorax" if variant == "apical" else f"{side} pneumothorax"
    if name == "atelectasis":
        return f"{region} atelectasis"
    if name == "cardiomegaly":
        return _choice(rng, ("cardiomegaly", "enlarged cardiac silhouette"))
    return _choice(rng, ("pulmonary edema", "interstitial pulmonary edema"))


def _sentence(rng: np.random.Generator, name: str, side: Optional[str], zone: Optional[str], variant: str,
              detail: str) -> str:
    region = _choice(rng, _REGION[(side, zone)]) if side in ("right", "left") and zone else ""
    if name == "opacity":
        options = (f"Dense airspace consolidation in the {region} with air bronchograms.",
                   f"Patchy consolidation is present in the {region}, in keeping with pneumonia.",
                   f"Ill-defined opacification of the {region}.")
    elif name == "nodule":
        noun = "mass" if variant == "mass" else "nodule"
        options = (f"A {detail} mm {noun} is seen in the {region}.",
                   f"Lobulated {noun} in the {region} measuring {detail} mm.",
                   f"There is a rounded {noun} projecting over the {region}.")
    elif name == "effusion":
        where = "bilateral pleural effusions" if side == "bilateral" else f"a {side} pleural effusion"
        options = (f"Blunting of the costophrenic angle with a meniscus, {where}.",
                   f"Fluid tracking up the lateral chest wall: {where}.",
                   f"There is {where} obscuring the hemidiaphragm.")
    elif name == "pneumothorax":
        where = f"{side} apical" if variant == "apical" else f"{side}-sided"
        options = (f"Visceral pleural line with absent lung markings peripherally: {where} pneumothorax.",
                   f"A {where} pneumothorax is demonstrated.")
    elif name == "atelectasis":
        options = (f"Volume loss with atelectasis in the {region}.",
                   f"Linear discoid atelectasis at the {region}.",
                   f"Collapse of the {region}.")
    elif name == "cardiomegaly":
        options = ("The cardiothoracic ratio is increased: cardiomegaly.",
                   "The cardiac silhouette is enlarged.")
    else:
        options = ("Bilateral perihilar airspace shadowing and septal lines, in keeping with pulmonary edema.",
                   "Upper lobe venous diversion, Kerley B lines and perihilar haze: interstitial edema.")
    return _choice(rng, options)


def report_for(rng: np.random.Generator, findings: Sequence[tuple[str, Optional[str], Optional[str], str, str]]) -> str:
    """A short report: a clinical-history line, one sentence per finding, a conclusion."""
    history = _choice(rng, ("Clinical details: breathless.", "Clinical details: fever, productive cough.",
                            "Indication: follow-up.", "Indication: chest pain."))
    body = " ".join(_sentence(rng, *finding) for finding in findings)
    names = sorted({finding[0] for finding in findings})
    conclusion = "Conclusion: " + (", ".join(names) if names else "no acute abnormality") + "."
    return f"{history}\n{body or 'Clear lungs.'}\n{conclusion}\n"
