"""Normal chest anatomy of the external simulator as tissue path lengths (mm) on the pixel grid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from afloc_models.evaluation.external.body import (
    Body,
    Pose,
    Projection,
    ball_path,
    bezier,
    heart_silhouette,
    lung_masks,
    tube_path,
)

__all__ = ["render_anatomy", "fractal_noise"]


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], scales_px: tuple[float, ...]) -> np.ndarray:
    """Sum of band-limited noises at several scales (1/f-like), zero mean, unit std."""
    total = np.zeros(shape, dtype=np.float32)
    for scale in scales_px:
        layer = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(scale, 0.5))
        std = float(layer.std())
        total += (layer / std if std > 0 else layer) * (scale ** 0.5)
    std = float(total.std())
    return total / std if std > 0 else total


def render_anatomy(rng: np.random.Generator, body: Body, pose: Pose) -> Projection:
    """Path lengths of soft tissue, bone and lung air of a normal chest (no findings, no devices)."""
    u, v = pose.grid()
    px = pose.mm_per_px
    # Torso: neck widening into the shoulders, chest, slight waist; elliptic cross-section.
    shoulders = np.clip((v + 75.0) / 55.0, 0.0, 1.0)
    half = body.neck_half + (body.chest_half - body.neck_half) * np.sqrt(shoulders)
    half = half - 14.0 * np.clip((v - body.lung_height) / 120.0, 0.0, 1.0)
    across = np.clip(1.0 - (u / half) ** 2, 0.0, 1.0)
    soft = (body.body_depth * (0.55 + 0.45 * shoulders) * np.sqrt(across)).astype(np.float32)
    bone = np.zeros_like(soft)
    if body.arms:
        for side in (-1, 1):
            centre = side * (body.chest_half + 42.0)
            arm = np.clip(1.0 - ((u - centre) / 34.0) ** 2, 0.0, 1.0) * (v > -55.0)
            soft += 75.0 * np.sqrt(arm)
            bone += tube_path(u, v, np.array([(centre, -30.0), (centre + side * 6.0, 260.0)]), 11.0)
        for side in (-1, 1):  # humeral heads at the shoulders
            bone += 0.5 * ball_path(u, v, side * (body.chest_half + 20.0), -36.0, 23.0)

    lungs = lung_masks(body, pose)
    both = lungs[-1] | lungs[1]
    distance = ndimage.distance_transform_edt(both) * px
    lung_depth = (0.60 * body.body_depth * (1.0 - np.exp(-distance / 22.0))).astype(np.float32)

    heart = heart_silhouette(body, u, v)
    heart_path = np.maximum(ball_path(u, v, *body.heart_lv), ball_path(u, v, *body.heart_ra))
    knob = ball_path(u, v, *body.aortic_knob)
    column = (np.abs(u) < 20.0 + 12.0 * np.clip(v / body.lung_height, 0.0, 1.0)) & (v > -80.0)
    mediastinum = np.where(column, 70.0, 0.0).astype(np.float32)
    air = np.clip(lung_depth - 0.95 * heart_path - knob - mediastinum, 0.0, None) * both

    # Airways: trachea and main bronchi carry air through the mediastinum.
    trachea = tube_path(u, v, np.array([(0.0, -120.0), (0.0, body.carina_v)]), 8.5)
    for side in (-1, 1):
        hu, hv = body.hilum(side)
        trachea = np.maximum(trachea, tube_path(u, v, np.array([(0.0, body.carina_v), (hu * 0.7, hv + 8.0)]), 5.5))
    air += trachea
    # Gastric bubble under the left hemidiaphragm.
    if rng.random() < 0.7:
        air += ball_path(u, v, rng.uniform(45.0, 80.0), body.dome[1] + rng.uniform(22.0, 34.0), rng.uniform(14.0, 26.0))

    # Spine: vertebral bodies with discs, pedicles; fading below the diaphragm is not needed.
    level = (v - body.rib_start) / (0.8 * body.rib_step)
    vertebra = (np.abs(level - np.round(level)) < 0.38) & (np.abs(u) < 19.0)
    spine = np.where(vertebra, 7.0, 2.5) * (np.abs(u) < 19.0) * (v > -90.0)
    bone += ndimage.gaussian_filter(spine.astype(np.float32), 1.2 / px)
    for side in (-1, 1):
        pedicle = ((u - side * 13.0) / 4.5) ** 2 + ((level - np.round(level)) / 0.22) ** 2 <= 1.0
        bone += 4.0 * pedicle * (v > -90.0)
    # Ribs: posterior arcs from the spine outwards and down, fainter anterior arcs back in.
    for i in range(11):
        top = body.rib_start + i * body.rib_step
        for side in (-1, 1):
            wall = (body.half_width[0] if side < 0 else body.half_width[1]) * (0.55 + 0.45 * min(1.0, (i + 1) / 4.0))
            posterior = bezier((side * 16.0, top), (side * 0.6 * wall, top - 9.0), (side * (wall + 8.0), top + 34.0))
            bone += 0.55 * tube_path(u, v, posterior, np.linspace(5.5, 4.5, len(posterior)))
            anterior = bezier((side * (wall + 8.0), top + 34.0), (side * 0.95 * wall, top + 75.0),
                              (side * 0.35 * wall, top + 92.0 + 3.0 * i))
            bone += 0.22 * tube_path(u, v, anterior, 4.0)
    # Clavicles and scapulae.
    for side in (-1, 1):
        clavicle = bezier((side * 16.0, -14.0), (side * 0.5 * body.chest_half, -2.0), (side * 0.95 * body.chest_half, -40.0))
        bone += 0.8 * tube_path(u, v, clavicle, 7.0)
        if body.scapulae:
            wall = body.half_width[0] if side < 0 else body.half_width[1]
            a0, a1 = wall - 22.0, wall - 45.0
            edge = a0 + (a1 - a0) * np.clip((v + 25.0) / (0.55 * body.lung_height + 25.0), 0.0, 1.0)
            blade = (side * u > edge) & (v > -30.0) & (v < 0.55 * body.lung_height) & (np.abs(u) < body.chest_half)
            bone += 6.0 * ndimage.gaussian_filter(blade.astype(np.float32), 2.0 / px)
    if body.breasts:
        for side in (-1, 1):
            cu, cv = side * 72.0, body.dome[1] - 20.0
            shape = np.clip(1.0 - ((u - cu) / 80.0) ** 2 - ((v - cv) / 65.0) ** 2, 0.0, 1.0)
            soft += 42.0 * np.sqrt(shape) * (v > cv - 30.0)

    # Vessels: branching soft-tissue tubes from each hilum, thinner towards the periphery.
    vessels = np.zeros_like(soft)
    for side in (-1, 1):
        hu, hv = body.hilum(side)
        stack = [((hu, hv), angle, rng.uniform(38.0, 55.0), 3.6, 0) for angle in
                 np.linspace(-65.0, 80.0, 7) + rng.uniform(-10.0, 10.0, size=7)]
        while stack:
            start, angle, length, radius, depth = stack.pop()
            theta = np.deg2rad(angle)
            end = (start[0] + side * np.cos(theta) * length, start[1] + np.sin(theta) * length)
            bend = (0.5 * (start[0] + end[0]) + rng.normal(0, 4.0), 0.5 * (start[1] + end[1]) + rng.normal(0, 4.0))
            vessels = np.maximum(vessels, tube_path(u, v, bezier(start, bend, end, 6), np.linspace(radius, radius * 0.7, 6)))
            if depth < 3:
                for turn in (-1.0, 1.0):
                    stack.append((end, angle + turn * rng.uniform(10.0, 32.0), length * rng.uniform(0.55, 0.8),
                                  radius * 0.68, depth + 1))
        hilum_blob = ball_path(u, v, hu, hv, 16.0)
        vessels = np.maximum(vessels, hilum_blob)
    vessels *= both
    texture = (4.0 * np.clip(fractal_noise(rng, soft.shape, (1.5 / px, 4.0 / px, 9.0 / px)) + 1.0, 0.0, None)) * both
    return Projection(
        pose=pose, u=u, v=v, soft=soft, bone=bone, metal=np.zeros_like(soft), air=air.astype(np.float32),
        lungs=lungs, heart=heart, lung_depth=lung_depth, vessels=vessels.astype(np.float32),
        texture=texture.astype(np.float32),
    )
