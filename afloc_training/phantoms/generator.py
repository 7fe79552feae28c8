"""The public phantom generator: one study (image, report, per-finding masks) from one generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from afloc_models.errors import ConfigError
from afloc_training.phantoms.anatomy import _render_anatomy, _sample_anatomy, _sample_grid, _smooth_noise
from afloc_training.phantoms.findings import _CLEARS_MARKINGS, _RENDERERS, _choose_specs, _prompt
from afloc_training.phantoms.language import _write_report
from afloc_training.phantoms.style import STYLES, add_devices, add_texture, finish_varied, restyle_finding, sample_style

MIN_SIZE = 64


MAX_SIZE = 2048


@dataclass(frozen=True)
class Finding:
    """One finding of a phantom.

    ``side`` is the patient's side ("right" is on the image left), or "bilateral", or None
    (cardiomegaly). ``zone`` is the lung zone (upper/middle/lower thirds of the lung height) or
    None. ``prompt`` is a short canonical text ("right lower zone opacity"). ``mask`` is ``[H, W]``
    bool, True where the finding is.
    """

    name: str
    side: Optional[str]
    zone: Optional[str]
    prompt: str
    mask: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Phantom:
    """A synthetic study: ``image`` is ``[H, W]`` uint8 (0 = black/air, 255 = white/bone)."""

    image: np.ndarray = field(repr=False, compare=False)
    report: str
    findings: list[Finding]


def _finish(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """Detector blur, contrast and noise; attenuation ``[H, W]`` float -> ``[H, W]`` uint8."""
    scale = size / 256.0
    image = ndimage.gaussian_filter(image, 0.7 * scale, mode="nearest")
    image = image + 0.015 * _smooth_noise(rng, image.shape, 6.0 * scale)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    low, high = rng.uniform(0.0, 0.05), rng.uniform(0.88, 1.0)
    image = low + (high - low) * image
    image = image + rng.normal(0.0, rng.uniform(0.008, 0.018), size=image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


DEFAULT_STYLE = "plain"


def generate_phantom(rng: np.random.Generator, size: int = 256, style: str = DEFAULT_STYLE) -> Phantom:
    """One synthetic chest radiograph with 0-3 findings, its report and per-finding masks.

    ``rng`` is the only source of randomness: the same generator state gives the same phantom.
    The image is ``[size, size]`` uint8; each ``Finding.mask`` is ``[size, size]`` bool.
    ``style`` is ``"plain"`` (clean phantoms) or ``"varied"`` (domain randomisation: pose, texture,
    exposure, noise, devices and finding appearance drawn from wide ranges; :mod:`.style`).
    """
    return _generate(rng, size, draw_findings=True, style=style)


def _generate(rng: np.random.Generator, size: int, draw_findings: bool, style: str = DEFAULT_STYLE) -> Phantom:
    """:func:`generate_phantom`; with ``draw_findings=False`` the same study without its findings
    drawn (same anatomy, pose, texture, noise, report and masks), to measure their contrast."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"phantom size must be an integer between {MIN_SIZE} and {MAX_SIZE}, got {size!r}")
    if style not in STYLES:
        raise ConfigError(f"unknown phantom style {style!r} (known: {', '.join(STYLES)})")
    size = int(size)
    # One independent stream per stage, so leaving the findings out changes nothing else.
    seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=7)]
    spec_rng, anatomy_rng, pose_rng, finding_rng, finish_rng, report_rng = (
        np.random.default_rng(s) for s in seeds[:6]
    )
    texture_seed = seeds[6]
    # The style has its own streams (derived from the texture seed), so a plain study is drawn
    # exactly as before the styles existed.
    look = sample_style(np.random.default_rng([texture_seed, 1]), style)
    look_rng = np.random.default_rng([texture_seed, 2])

    specs = _choose_specs(spec_rng)
    healthy = _sample_anatomy(anatomy_rng)
    grid = _sample_grid(pose_rng, size, look.rotation_deg, look.scale, look.shift)
    anat = healthy.enlarge_heart(finding_rng) if any(s.name == "cardiomegaly" for s in specs) else healthy
    layers = _render_anatomy(np.random.default_rng(texture_seed), anat, grid, look.rib_gain)
    texture_state = np.random.default_rng([texture_seed, 3])
    layers.image = add_texture(texture_state, layers.image, layers.body, look)

    # Pneumothorax and effusion wipe out lung markings, so they render before the markings are
    # added; every other finding is drawn on top of them.
    masks: dict[int, np.ndarray] = {}
    details: dict[int, str] = {}
    first = [i for i, spec in enumerate(specs) if spec.name in _CLEARS_MARKINGS]
    def render(i: int) -> None:
        before = layers.image.copy()
        masks[i], details[i] = _RENDERERS[specs[i].name](finding_rng, anat, grid, layers, specs[i])
        layers.image = restyle_finding(look_rng, before, layers.image, look)

    for i in first:
        render(i)
    layers.image += look.markings * layers.markings
    for i in (i for i in range(len(specs)) if i not in first):
        render(i)

    image = layers.image
    if not draw_findings:
        plain = _render_anatomy(np.random.default_rng(texture_seed), healthy, grid, look.rib_gain)
        plain_image = add_texture(np.random.default_rng([texture_seed, 3]), plain.image, plain.body, look)
        image = plain_image + look.markings * plain.markings
    image = add_devices(np.random.default_rng([texture_seed, 4]), image, look)
    findings = [
        Finding(name=spec.name, side=spec.side, zone=spec.zone, prompt=_prompt(spec), mask=masks[i])
        for i, spec in enumerate(specs)
    ]
    report = _write_report(report_rng, specs, [details[i] for i in range(len(specs))])
    finished = _finish(finish_rng, image, size) if look.name == "plain" else finish_varied(finish_rng, image, look)
    return Phantom(image=finished, report=report, findings=findings)
