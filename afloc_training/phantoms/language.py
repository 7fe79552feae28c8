"""Phantom report language: positive, impression and negative sentences and the report layouts."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from afloc_training.phantoms.findings import FINDING_NAMES, _Spec

_ZONE_NOUNS = {
    "upper": ("upper zone", "upper lung zone", "upper lung", "upper lobe"),
    "middle": ("mid zone", "middle lung zone", "mid lung", "midlung"),
    "lower": ("lower zone", "lower lung zone", "lower lung", "lung base", "lower lobe"),
}


_ZONE_ADJECTIVES = {
    "upper": ("upper zone", "upper lobe", "apical", "upper lung"),
    "middle": ("mid zone", "midlung", "middle zone", "mid lung"),
    "lower": ("lower zone", "lower lobe", "basilar", "lower lung"),
}


# Words that never appear in a sentence stating a present finding (tests rely on this split).
NEGATION_CUES = ("no", "not", "without", "normal", "clear", "unremarkable", "negative", "intact", "none")


_NEGATIVES = {
    "effusion": ("No pleural effusion.", "No effusion.", "No pleural effusions are seen."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
    "opacity": ("No focal consolidation.", "No focal airspace opacity is seen."),
    "nodule": ("No pulmonary nodules.", "No suspicious nodule is identified."),
    "cardiomegaly": (
        "Heart size is normal.",
        "The cardiac silhouette is normal in size.",
        "Normal heart size.",
        "No cardiomegaly.",
        "The cardiomediastinal silhouette is normal.",
    ),
    "edema": ("No pulmonary edema.", "No pulmonary vascular congestion.", "No edema."),
    "atelectasis": ("No atelectasis.",),
}


_NEGATIVE_PROBABILITY = {
    "cardiomegaly": 0.85,
    "effusion": 0.8,
    "pneumothorax": 0.8,
    "opacity": 0.6,
    "edema": 0.4,
    "nodule": 0.25,
    "atelectasis": 0.1,
}


_NEUTRAL = (
    "Mediastinal and hilar contours are unremarkable.",
    "The osseous structures are intact.",
    "No acute osseous abnormality.",
    "The visualized upper abdomen is unremarkable.",
)


_INDICATIONS = (
    "___-year-old with shortness of breath.",
    "Cough and fever.",
    "___ year old man with chest pain.",
    "Dyspnea, evaluate for acute process.",
    "Preoperative study.",
    "___ with fatigue.",
)


_EXAMINATIONS = ("CHEST (PA AND LAT)", "CHEST (PA)", "Chest radiograph, frontal view", "CHEST (PORTABLE AP)")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _positive_sentence(rng: np.random.Generator, spec: _Spec, detail: str) -> str:
    """A FINDINGS-style sentence that names the finding with its side and zone."""
    side = spec.side or ""
    noun = _pick(rng, _ZONE_NOUNS[spec.zone]) if spec.zone else ""
    adjective = _pick(rng, _ZONE_ADJECTIVES[spec.zone]) if spec.zone else ""
    if spec.name == "opacity":
        kind = _pick(rng, ("", "patchy ", "focal ", "ill-defined ", "confluent "))
        options = (
            f"there is {_article(kind or 'opacity')} {kind}opacity in the {side} {noun}.",
            f"focal consolidation in the {side} {noun}.",
            f"{side} {adjective} airspace opacity.",
            f"patchy airspace disease is seen in the {side} {noun}.",
            f"consolidation of the {side} {noun}, concerning for pneumonia.",
            f"{side} {adjective} pneumonia.",
            f"{side} {adjective} consolidation.",
        )
    elif spec.name == "nodule":
        mm = detail
        options = (
            f"a nodule measuring {mm} mm projects over the {side} {noun}.",
            f"there is a {int(mm) / 10:.1f} cm rounded nodular density in the {side} {noun}.",
            f"{side} {adjective} pulmonary nodule measuring {mm} mm.",
            f"well-circumscribed nodule in the {side} {noun}.",
            f"{side} {adjective} {'mass' if int(mm) >= 20 else 'nodule'}.",
            f"rounded {'mass' if int(mm) >= 20 else 'nodular density'} in the {side} {noun}.",
        )
    elif spec.name == "effusion":
        size = spec.variant
        if spec.side == "bilateral":
            options = (
                f"{size} bilateral pleural effusions.",
                f"there are {size} bilateral effusions.",
                f"bilateral pleural effusions, {size} in size.",
            )
        else:
            options = (
                f"{size} {side} pleural effusion.",
                f"there is {_article(size)} {size} {side} pleural effusion with blunting of the "
                "costophrenic angle.",
                f"{size} {side} effusion.",
                f"layering {side} pleural fluid consistent with {_article(size)} {size} effusion.",
            )
    elif spec.name == "pneumothorax":
        if spec.variant == "apical":
            options = (
                f"there is a small {side} apical pneumothorax.",
                f"small {side} apical pneumothorax.",
                f"a {side} apical pneumothorax is present.",
            )
        else:
            options = (
                f"there is a moderate {side} pneumothorax with a visible pleural line.",
                f"{side}-sided pneumothorax along the lateral chest wall.",
                f"a moderate {side} pneumothorax is present.",
            )
    elif spec.name == "atelectasis":
        if spec.variant == "band":
            options = (
                f"linear atelectasis in the {side} {noun}.",
                f"plate-like atelectasis at the {side} {noun}.",
                f"subsegmental atelectasis in the {side} {noun}.",
            )
        else:
            options = (
                f"wedge-shaped atelectasis in the {side} {noun}.",
                f"{side} {adjective} atelectasis.",
            )
    elif spec.name == "cardiomegaly":
        options = (
            "the heart is enlarged.",
            "cardiomegaly.",
            "moderate cardiomegaly.",
            "the cardiac silhouette is enlarged.",
            "enlarged cardiac silhouette.",
            "the heart size is enlarged.",
        )
    else:  # edema
        options = (
            "bilateral perihilar haziness consistent with pulmonary edema.",
            "mild pulmonary edema.",
            "interstitial edema with vascular congestion.",
            "there is moderate pulmonary edema.",
        )
    return _sentence(_pick(rng, options))


def _impression_sentence(rng: np.random.Generator, spec: _Spec, detail: str) -> str:
    """A short IMPRESSION item for a finding."""
    side = spec.side or ""
    adjective = _pick(rng, _ZONE_ADJECTIVES[spec.zone]) if spec.zone else ""
    if spec.name == "opacity":
        options = (f"{side} {adjective} pneumonia.", f"{side} {adjective} consolidation.")
    elif spec.name == "nodule":
        options = (f"{side} {adjective} pulmonary nodule.", f"{side} {adjective} nodule, {detail} mm.")
    elif spec.name == "effusion":
        options = (f"{spec.variant} bilateral pleural effusions.",) if side == "bilateral" else (
            f"{spec.variant} {side} pleural effusion.",
        )
    elif spec.name == "pneumothorax":
        apical = "apical " if spec.variant == "apical" else ""
        options = (f"{side} {apical}pneumothorax.",)
    elif spec.name == "atelectasis":
        options = (f"{side} {adjective} atelectasis.",)
    elif spec.name == "cardiomegaly":
        options = ("cardiomegaly.", "enlarged heart.")
    else:
        options = ("pulmonary edema.", "mild interstitial edema.")
    return _sentence(_pick(rng, options))


def _negative_sentences(rng: np.random.Generator, present: set[str]) -> list[str]:
    """Explicit negatives, only ever about findings that are absent."""
    absent = [name for name in FINDING_NAMES if name not in present]
    sentences: list[str] = []
    said: set[str] = set()
    if {"opacity", "effusion", "pneumothorax"} <= set(absent) and rng.random() < 0.5:
        sentences.append(
            _pick(
                rng,
                (
                    "No focal consolidation, pleural effusion, or pneumothorax.",
                    "There is no focal consolidation, pleural effusion or pneumothorax.",
                ),
            )
        )
        said |= {"opacity", "effusion", "pneumothorax"}
    elif {"effusion", "pneumothorax"} <= set(absent) and rng.random() < 0.5:
        sentences.append("No pleural effusion or pneumothorax.")
        said |= {"effusion", "pneumothorax"}
    for name in absent:
        if name not in said and rng.random() < _NEGATIVE_PROBABILITY[name]:
            sentences.append(_pick(rng, _NEGATIVES[name]))
    if not (present - {"cardiomegaly"}) and rng.random() < 0.6:
        sentences.insert(0, _pick(rng, ("The lungs are clear.", "Lungs are clear.")))
    return sentences


def _wrap(rng: np.random.Generator, paragraph: str) -> str:
    """Wrap like MIMIC-CXR reports sometimes are (hard line breaks inside sentences)."""
    if rng.random() < 0.5:
        return paragraph
    return textwrap.fill(
        paragraph, width=int(rng.integers(60, 80)), break_on_hyphens=False, break_long_words=False,
        initial_indent=" ", subsequent_indent=" ",
    )


def _impression_block(rng: np.random.Generator, items: list[str]) -> str:
    if len(items) > 1 and rng.random() < 0.6:
        return "\n".join(f" {number}. {item}" for number, item in enumerate(items, start=1))
    return " ".join(items)


def _write_report(rng: np.random.Generator, specs: list[_Spec], details: list[str]) -> str:
    """Free-text report with varied templates: sectioned, impression-only or plain text."""
    present = {spec.name for spec in specs}
    order = rng.permutation(len(specs))
    positives = [_positive_sentence(rng, specs[i], details[i]) for i in order]
    negatives = _negative_sentences(rng, present)
    neutral = [_pick(rng, _NEUTRAL)] if rng.random() < 0.4 else []
    findings_text = " ".join(positives + negatives + neutral)
    if not findings_text:  # only possible for a normal study
        findings_text = "The lungs are clear. Heart size is normal."
    if specs:
        impression = [_impression_sentence(rng, specs[i], details[i]) for i in order]
    else:
        impression = [
            _pick(rng, ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                        "Normal chest radiograph."))
        ]

    layout = rng.random()
    upper = rng.random() < 0.8
    header = (lambda name: name.upper()) if upper else (lambda name: name.capitalize())
    if layout < 0.5:
        lines = []
        if rng.random() < 0.6:
            lines.append(f"{header('examination')}: {_pick(rng, _EXAMINATIONS)}")
        if rng.random() < 0.7:
            lines.append(f"{header('indication')}: {_pick(rng, _INDICATIONS)}")
        if rng.random() < 0.4:
            lines.append(f"{header('technique')}: Single frontal view of the chest.")
        if rng.random() < 0.6:
            lines.append(f"{header('comparison')}: {_pick(rng, ('None.', 'None available.', '___.'))}")
        body = "\n\n".join(lines)
        body += f"\n\n{header('findings')}:\n\n{_wrap(rng, findings_text)}"
        body += f"\n\n{header('impression')}:\n\n{_impression_block(rng, impression)}\n"
        return body.lstrip()
    if layout < 0.65:
        extra = " ".join(negatives[:2])
        block = _impression_block(rng, impression)
        return f"{header('impression')}: {block}" + (f"\n{extra}" if extra and specs else "") + "\n"
    return _wrap(rng, findings_text) + "\n"
