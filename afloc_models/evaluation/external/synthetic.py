"""One external synthetic study: anatomy, findings, devices, exposure, text, prompts and masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from afloc_models.errors import ConfigError
from afloc_models.evaluation.external.acquisition import add_devices, burn_in, expose
from afloc_models.evaluation.external.anatomy import render_anatomy
from afloc_models.evaluation.external.body import sample_body, sample_pose
from afloc_models.evaluation.external.language import prompt_for, report_for
from afloc_models.evaluation.external.lesions import RENDERERS, choose_specs

__all__ = ["ExternalCase", "ExternalFinding", "generate_case"]

MIN_SIDE, MAX_SIDE = 96, 2048


@dataclass(frozen=True)
class ExternalFinding:
    """A finding with its prompt and its mask ``[H, W]`` bool on the case's image grid."""

    name: str
    side: Optional[str]
    zone: Optional[str]
    prompt: str
    mask: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class ExternalCase:
    """A simulated study: ``image`` ``[H, W]`` float32 in [0, 1] as displayed (bright = dense).

    ``storage`` says how the writer stores it: ``png8``, ``dicom-mono1`` (inverted values,
    PhotometricInterpretation MONOCHROME1) or ``dicom-mono2``. ``devices`` names what was drawn.
    ``attenuation`` is the noise-free line integral before exposure (see the field).
    """

    image: np.ndarray = field(repr=False, compare=False)
    report: str
    findings: list[ExternalFinding]
    storage: str
    devices: tuple[str, ...]
    #: Noise-free line integral of attenuation ``[H, W]`` before exposure and processing (what the
    #: findings changed, free of the window and noise that differ with them; tests use it).
    attenuation: np.ndarray = field(repr=False, compare=False, default=None)


def generate_case(rng: np.random.Generator, long_side: int = 320, draw_findings: bool = True) -> ExternalCase:
    """Simulate one frontal chest radiograph with one to three findings.

    ``rng`` is the only source of randomness. With ``draw_findings=False`` the same study is
    returned without its findings drawn (same anatomy, pose, devices, noise, text, masks): tests use
    it to check that each mask covers what changed.
    """
    if isinstance(long_side, bool) or not isinstance(long_side, (int, np.integer)) or not MIN_SIDE <= long_side <= MAX_SIDE:
        raise ConfigError(f"external case size must be an integer between {MIN_SIDE} and {MAX_SIDE}, got {long_side!r}")
    seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=8)]
    spec_rng, body_rng, pose_rng, _, lesion_rng, device_rng, exposure_rng, text_rng = (
        np.random.default_rng(s) for s in seeds
    )
    specs = choose_specs(spec_rng)
    body = sample_body(body_rng)
    # Findings are placed and masked on the study as it is with them (an enlarged heart included);
    # without them only the drawing changes.
    diseased = body.cardiomegalic(lesion_rng) if any(s.name == "cardiomegaly" for s in specs) else body
    pose = sample_pose(pose_rng, body, int(long_side))
    proj = render_anatomy(np.random.default_rng(seeds[3]), diseased, pose)
    masks, details = [], []
    for spec in specs:
        mask, detail = RENDERERS[spec.name](lesion_rng, diseased, proj, spec)
        masks.append(mask)
        details.append(detail)
    if not draw_findings:
        proj = render_anatomy(np.random.default_rng(seeds[3]), body, pose)
    # A finding that found nothing to change (no lung air where it went) is left out entirely.
    kept = [i for i, mask in enumerate(masks) if mask.any()]
    specs, masks, details = [specs[i] for i in kept], [masks[i] for i in kept], [details[i] for i in kept]
    devices = add_devices(device_rng, diseased, proj)
    attenuation = proj.attenuation(mu_soft=0.02, mu_bone=0.05, mu_metal=0.8)
    image = burn_in(text_rng, expose(exposure_rng, proj), proj)
    storage = str(text_rng.choice(["png8", "dicom-mono1", "dicom-mono2"], p=[0.7, 0.18, 0.12]))
    findings = []
    for spec, mask, detail in zip(specs, masks, details):
        findings.append(ExternalFinding(spec.name, spec.side, spec.zone,
                                        prompt_for(text_rng, spec.name, spec.side, spec.zone, spec.variant), mask))
    report = report_for(text_rng, [(s.name, s.side, s.zone, s.variant, d) for s, d in zip(specs, details)])
    return ExternalCase(image=image, report=report, findings=findings, storage=storage, devices=tuple(devices),
                        attenuation=attenuation)
