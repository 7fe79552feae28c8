"""From feature similarities to a heatmap, a mask and boxes on the original pixel grid.

The path for one image and P prompts:

1. :func:`deep_similarity` / :func:`shallow_similarity`: local image features against the
   prompt embeddings -> coarse maps ``[P, h, w]`` over the letterboxed square.
2. :func:`to_square`: bilinear upsampling to the model's input square ``[P, S, S]``; the
   ``fused`` level mixes the two levels here, each min-max normalised over the image content.
3. :func:`smooth`: Gaussian smoothing on the square (the coarse grid leaves blocky edges),
   then (project recipe) :func:`guided_filter`: the image itself guides the heat onto the edges
   of what a coarse cell shows.
4. :func:`to_original_heatmap`: the :class:`~afloc_models.imaging.Letterbox` crops the padding
   away and resamples onto the original ``[H, W]`` grid, then the map is min-max normalised
   to ``[-1, 1]`` as in the AFLoc evaluation protocol.
5. :func:`threshold_mask` and :func:`mask_boxes`: ``heatmap >= threshold`` and one box per
   8-connected component.

Two recipes (:attr:`HeatmapSettings.recipe`; ``auto`` follows the checkpoint's ``compat``):

- ``project`` (models trained here): deep local features vs the prompt's *sentence* embedding
  with the raw inner product, upsampled to the square, smoothed there with sigma half a
  deep-feature cell, then refined by the guided filter within one cell. The inner product is
  what the training attention scores regions with; on the phantom benchmark it gave CNR 2.0
  against 1.2 for cosine, with an equal or better pointing game (docs/quality-log.md, first records).
- ``published`` (imported checkpoints; :func:`published_squares`): the published
  ``inference.py`` map: deep local features . the prompt's *report* embedding, Gaussian
  smoothing with sigma 1.5 grid cells on the feature grid (scipy's defaults: mirror edges,
  truncated at 4 sigma), then bilinear resizing to the square.

Both then go back to the original grid and to ``[-1, 1]`` the same way. The default threshold is
0.3 on the ``[-1, 1]`` map (the middle of the protocol's 0.1 ... 0.5 sweep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from afloc_models.errors import ConfigError
from afloc_models.imaging import Letterbox

__all__ = [
    "DEFAULT_THRESHOLD",
    "LEVELS",
    "MIRRORS",
    "REFINES",
    "Box",
    "HeatmapSettings",
    "Mirror",
    "deep_similarity",
    "fuse",
    "guided_filter",
    "mask_boxes",
    "mirror_average",
    "normalize_unit",
    "published_squares",
    "render_heatmaps",
    "resolved_mirror",
    "resolved_refine",
    "shallow_similarity",
    "smooth",
    "square_heatmaps",
    "threshold_mask",
    "to_original_heatmap",
    "to_square",
    "trained_similarity",
]

Level = Literal["deep", "shallow", "fused"]
Recipe = Literal["auto", "project", "published"]
RECIPES: tuple[str, ...] = ("auto", "project", "published")
#: Smoothing of the published recipe, in feature-grid cells (``eval/common.py``'s sigma).
PUBLISHED_SIGMA_CELLS = 1.5
Similarity = Literal["auto", "cosine", "dot"]
#: What a similarity map is computed by, once ``auto`` is resolved (by the predictor).
MapSimilarity = Literal["cosine", "dot"]
LEVELS: tuple[str, ...] = ("deep", "shallow", "fused")
MAP_SIMILARITIES: tuple[str, ...] = ("cosine", "dot")
SIMILARITIES: tuple[str, ...] = ("auto",) + MAP_SIMILARITIES
BOX_SCORES: tuple[str, ...] = ("max", "mean")
Mirror = Literal["auto", "on", "sides", "off"]
MIRRORS: tuple[str, ...] = ("auto", "on", "sides", "off")
Refine = Literal["auto", "guided", "off"]
REFINES: tuple[str, ...] = ("auto", "guided", "off")

#: Default mask threshold on the ``[-1, 1]``-normalised heatmap.
DEFAULT_THRESHOLD = 0.3

_EPS = 1e-8


def trained_similarity(local_attention: str) -> MapSimilarity:
    """The map similarity a checkpoint trained with ``loss.local_attention`` scored regions by
    (what ``similarity: auto`` resolves to): ``cosine`` for ``regions_cosine``, ``dot`` otherwise."""
    return "cosine" if local_attention == "regions_cosine" else "dot"


@dataclass(frozen=True)
class HeatmapSettings:
    """How similarity maps become heatmaps, masks and boxes.

    Attributes:
        level: ``deep`` (publication: deep local features vs the sentence embedding),
            ``shallow`` (mean over words of shallow local features vs each word) or ``fused``.
        fused_weights: ``(deep, shallow)`` weights of the ``fused`` level.
        similarity: ``dot`` (raw inner product), ``cosine`` or ``auto`` (the predictor picks
            the one the checkpoint's training attention scored regions by: ``cosine`` for
            ``loss.local_attention: regions_cosine``, ``dot`` otherwise).
        sigma_cells: Gaussian smoothing sigma in deep-feature cells (16 input pixels for a
            ResNet); 0 disables smoothing.
        threshold: mask threshold on the ``[-1, 1]`` heatmap.
        box_score: a box's score is the ``max`` or ``mean`` heat inside its component.
        recipe: ``project``, ``published`` (see the module docstring; the published recipe
            applies to the ``deep`` level, with the dot product, and ignores ``sigma_cells``)
            or ``auto`` (the predictor picks the checkpoint's ``compat``).
        mirror: ``on`` averages each similarity map with the map of the left-right mirrored
            image for the prompt with its sides exchanged ("right" <-> "left"), mirrored back
            (:func:`mirror_average`); ``sides`` does so only for prompts that name a side and
            reads side-free prompts ("cardiomegaly", "pulmonary edema") once, since the average
            of a side-free map is left-right symmetric and peaks between the lungs; ``off`` reads
            the image once; ``auto`` (the predictor): ``sides`` for the project recipe, ``off``
            for the published one, which reads once.
        refine: ``guided`` refines each smoothed map on the input square with a guided filter
            (:func:`guided_filter`) that takes the image itself as its guide, so that heat on a
            coarse cell follows the edges of what the image shows in that cell; ``off`` leaves
            the map as smoothed; ``auto`` (the predictor): ``guided`` for the project recipe,
            ``off`` for the published one.
        guide_cells: the guided filter's window radius in deep-feature cells (1: one cell, 8
            input pixels on the ``small`` model's 32 x 32 grid).
        guide_eps: the guided filter's regulariser, on pixels in ``[0, 1]``: intensity changes
            with a variance well below it are smoothed over, edges well above it are followed.
    """

    level: Level = "deep"
    fused_weights: tuple[float, float] = (0.5, 0.5)
    similarity: Similarity = "auto"
    sigma_cells: float = 0.5
    threshold: float = DEFAULT_THRESHOLD
    box_score: Literal["max", "mean"] = "max"
    recipe: Recipe = "auto"
    mirror: Mirror = "auto"
    refine: Refine = "auto"
    guide_cells: float = 1.0
    guide_eps: float = 1e-3

    def __post_init__(self) -> None:
        check_level(self.level)
        if self.mirror not in MIRRORS:
            raise ConfigError(f"mirror must be one of {', '.join(MIRRORS)}, got {self.mirror!r}")
        if self.refine not in REFINES:
            raise ConfigError(f"refine must be one of {', '.join(REFINES)}, got {self.refine!r}")
        if not self.guide_cells > 0:
            raise ConfigError(f"guide_cells must be > 0, got {self.guide_cells}")
        if not self.guide_eps > 0:
            raise ConfigError(f"guide_eps must be > 0, got {self.guide_eps}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        if self.box_score not in BOX_SCORES:
            raise ConfigError(f"box_score must be one of {', '.join(BOX_SCORES)}, got {self.box_score!r}")
        if len(self.fused_weights) != 2 or any(w < 0 for w in self.fused_weights) or sum(self.fused_weights) <= 0:
            raise ConfigError(f"fused_weights must be two non-negative numbers, not both 0; got {self.fused_weights}")
        if not self.sigma_cells >= 0:
            raise ConfigError(f"sigma_cells must be >= 0, got {self.sigma_cells}")
        check_threshold(self.threshold)


def _resolved_auto(value: str, choices: tuple[str, ...], name: str, recipe: str, for_project: str) -> str:
    """``value`` (one of ``choices``) with ``auto`` resolved for ``recipe``: ``for_project`` for
    the project recipe, ``off`` for the published one (read as published)."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    if value != "auto":
        return value
    return for_project if recipe == "project" else "off"


def resolved_mirror(mirror: str, recipe: str) -> Literal["on", "sides", "off"]:
    """``mirror`` with ``auto`` resolved for a checkpoint read by ``recipe`` (``project`` or
    ``published``): ``sides`` for the project recipe, ``off`` for the published one."""
    return _resolved_auto(mirror, MIRRORS, "mirror", recipe, "sides")  # type: ignore[return-value]


def resolved_refine(refine: str, recipe: str) -> Literal["guided", "off"]:
    """``refine`` with ``auto`` resolved for ``recipe``: ``guided`` for the project recipe,
    ``off`` for the published one (its map is reproduced as published)."""
    return _resolved_auto(refine, REFINES, "refine", recipe, "guided")  # type: ignore[return-value]


def mirror_average(maps: torch.Tensor, mirrored_maps: torch.Tensor) -> torch.Tensor:
    """Average grid maps ``[P, h, w]`` with maps of the mirrored image, mirrored back.

    ``mirrored_maps[i]`` is the map of prompt ``i`` with its sides exchanged on the left-right
    mirror of the input square. A map that sits one cell to the right of its finding on the image
    sits one cell to the left of it on the mirror, so the average cancels any fixed left-right
    offset a model has learned (contrastive training pins where a region is only up to such an
    offset; docs/inference.md, "Mirror averaging").
    """
    if maps.shape != mirrored_maps.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and mirrored maps {tuple(mirrored_maps.shape)} differ in shape")
    return (maps + mirrored_maps.flip(-1)) / 2


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    return level


def check_threshold(threshold: float) -> float:
    # The map spans [-1, 1]; a threshold outside it gives an all-true or all-false mask.
    if not isinstance(threshold, (int, float)) or not -1.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"threshold must be a number in [-1, 1] (the heatmap's range), got {threshold!r}")
    return float(threshold)


@dataclass(frozen=True)
class Box:
    """One connected component of a mask, in original pixel coordinates.

    ``(x0, y0)`` is the top-left corner and ``(x1, y1)`` the bottom-right corner as continuous
    edges: pixel ``k`` spans ``[k, k + 1)``, so ``x1 - x0`` is the width in pixels.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    score: float  #: max (or mean) heat inside the component
    pixels: int  #: component size in pixels

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def to_dict(self) -> dict[str, float]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "score": self.score, "pixels": self.pixels}


# --------------------------------------------------------------------------------------------
# Similarity on the feature grid
# --------------------------------------------------------------------------------------------


def deep_similarity(deep: torch.Tensor, sentences: torch.Tensor, similarity: MapSimilarity = "dot") -> torch.Tensor:
    """Similarity of every deep local feature with every prompt's sentence embedding.

    Args:
        deep: ``[D, h, w]`` deep local features of one image.
        sentences: ``[P, D]`` one sentence embedding per prompt.

    Returns:
        ``[P, h, w]`` float32.
    """
    _check_map_similarity(similarity)
    regions = deep.flatten(1).float()  # [D, N]
    queries = sentences.float()
    if similarity == "cosine":
        regions = F.normalize(regions, dim=0, eps=_EPS)
        queries = F.normalize(queries, dim=1, eps=_EPS)
    return (queries @ regions).view(queries.shape[0], *deep.shape[1:])


def _check_map_similarity(similarity: str) -> None:
    if similarity not in MAP_SIMILARITIES:
        raise ConfigError(
            f"a similarity map is computed by {' or '.join(map(repr, MAP_SIMILARITIES))}, got {similarity!r} "
            "('auto' is resolved by AFLocPredictor from the checkpoint)"
        )


def shallow_similarity(
    shallow: torch.Tensor, words: torch.Tensor, n_words: torch.Tensor, similarity: MapSimilarity = "dot"
) -> torch.Tensor:
    """Mean over each prompt's words of the word-to-region similarity.

    Args:
        shallow: ``[D, h, w]`` shallow local features of one image.
        words: ``[P, D, W]`` word embeddings, padded beyond ``n_words``.
        n_words: ``[P]`` valid words per prompt (>= 1).

    Returns:
        ``[P, h, w]`` float32.
    """
    _check_map_similarity(similarity)
    regions = shallow.flatten(1).float()  # [D, N]
    words = words.float()
    if similarity == "cosine":
        regions = F.normalize(regions, dim=0, eps=_EPS)
        words = F.normalize(words, dim=1, eps=_EPS)
    per_word = torch.einsum("pdw,dn->pwn", words, regions)  # [P, W, N]
    valid = torch.arange(words.shape[2], device=words.device)[None, :] < n_words.to(words.device)[:, None]
    weights = valid.float() / valid.sum(dim=1, keepdim=True).clamp(min=1).float()  # [P, W]
    maps = (per_word * weights[:, :, None]).sum(dim=1)  # [P, N]
    return maps.view(words.shape[0], *shallow.shape[1:])


# --------------------------------------------------------------------------------------------
# Square, fusion, smoothing
# --------------------------------------------------------------------------------------------


def to_square(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of ``[P, h, w]`` maps covering the square to ``[P, size, size]``.

    ``align_corners=False`` treats grid cell ``m`` as covering ``[m, m + 1) * size / h``, the
    same convention :meth:`Letterbox.to_original` uses.
    """
    if maps.shape[-2:] == (size, size):
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def fuse(
    deep_square: torch.Tensor, shallow_square: torch.Tensor, box: Letterbox, weights: tuple[float, float]
) -> torch.Tensor:
    """Weighted sum of the two levels ``[P, S, S]``, each min-max normalised to ``[-1, 1]``.

    The two levels live on different scales (different projections), so each is normalised
    over the image content (padding excluded) before mixing.
    """
    deep_w, shallow_w = weights
    total = float(deep_w + shallow_w)
    return (deep_w * _normalize_content(deep_square, box) + shallow_w * _normalize_content(shallow_square, box)) / total


def _normalize_content(squares: torch.Tensor, box: Letterbox) -> torch.Tensor:
    content = squares[
        :, box.pad_top : box.pad_top + box.resized_shape[0], box.pad_left : box.pad_left + box.resized_shape[1]
    ].flatten(1)
    low = content.min(dim=1).values[:, None, None]
    high = content.max(dim=1).values[:, None, None]
    span = (high - low).clamp(min=_EPS)
    return 2.0 * (squares - low) / span - 1.0


def published_squares(maps: torch.Tensor, size: int, sigma_cells: float = PUBLISHED_SIGMA_CELLS) -> torch.Tensor:
    """The published map: ``[P, h, w]`` grid maps smoothed on the grid, then resized to ``[P, size, size]``.

    Smoothing is scipy's ``gaussian_filter`` with its defaults (mirror edges, 4 sigma) on the
    float32 grid, resizing is bilinear with ``align_corners=False``, as ``eval/common.py`` does.
    """
    grids = maps.detach().float().cpu().numpy()
    smoothed = np.stack([ndimage.gaussian_filter(g, sigma=(sigma_cells, sigma_cells), order=0) for g in grids])
    out = F.interpolate(torch.from_numpy(smoothed)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0]


def guided_filter(guide: np.ndarray, maps: np.ndarray, radius_px: int, eps: float) -> np.ndarray:
    """Edge-aware refinement of maps ``[P, S, S]`` by the image ``guide`` ``[S, S]`` (in ``[0, 1]``).

    The guided filter of He, Sun and Tang (ECCV 2010): in every ``(2 r + 1)``-pixel window the
    output is a linear function ``a * guide + b`` of the image, fitted to the map by least squares
    with ``a`` shrunk by ``eps``; each pixel then averages the fits of the windows it lies in.
    Where the image is flat (variance well below ``eps``) the map is only box-smoothed (twice);
    where a window holds an edge that the map also rises across (a nodule, an effusion's
    meniscus), the heat follows the edge: a peak that sat a cell beside a bright blob moves onto it. The output
    is linear in the map, so its scale and offset do not matter. Windows are clipped at the
    square's border by mirroring (scipy's ``reflect``).
    """
    if guide.ndim != 2 or maps.ndim != 3 or maps.shape[-2:] != guide.shape:
        raise ValueError(f"guide [S, S] and maps [P, S, S] expected, got {guide.shape} and {maps.shape}")
    width = 2 * int(radius_px) + 1
    image = guide.astype(np.float32)
    maps = maps.astype(np.float32)

    def mean(x: np.ndarray) -> np.ndarray:  # window means over the last two axes
        return ndimage.uniform_filter(x, size=(1,) * (x.ndim - 2) + (width, width), mode="reflect")

    # The guide's statistics once; four window means per map.
    mean_i = mean(image)
    var_i = mean(image * image) - mean_i * mean_i
    mean_p = mean(maps)
    cov_ip = mean(image * maps) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * image + mean(b)


def smooth(square: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing of one ``[S, S]`` map (edge values extended); ``sigma_px <= 0``: unchanged."""
    if sigma_px <= 0:
        return square
    return ndimage.gaussian_filter(square, sigma=sigma_px, mode="nearest", truncate=3.0)


# --------------------------------------------------------------------------------------------
# Back to the original image
# --------------------------------------------------------------------------------------------


def normalize_unit(heatmap: np.ndarray) -> np.ndarray:
    """Min-max normalise to ``[-1, 1]`` in place-friendly float32; a constant map becomes zeros.

    Same definition as :func:`afloc_models.evaluation.metrics.normalize_heatmap` (which works in
    float64 for evaluation); this one keeps float32 to halve the cost on large images.
    """
    values = torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))
    low_t, high_t = torch.aminmax(values)  # one multi-threaded pass for both
    low, high = float(low_t), float(high_t)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("heatmap contains NaN or infinite values")
    if high == low:
        return np.zeros(values.shape, dtype=np.float32)
    # Dividing by the span computed in float32 maps the maximum to exactly 1 (x / x == 1),
    # so the range is exactly [-1, 1], as the protocol's thresholds assume.
    out = torch.sub(values, low_t)
    out.div_(high_t - low_t).mul_(2.0).sub_(1.0)
    return out.numpy()


def to_original_heatmap(square: np.ndarray, box: Letterbox) -> np.ndarray:
    """``[s, s]`` map over the letterboxed square -> float32 ``[H, W]`` in ``[-1, 1]``.

    The padding is cropped away and the content resampled at the original pixel centres by
    ``box`` (the exact inverse of the letterbox), then min-max normalised over the image.
    """
    return normalize_unit(box.to_original(square))


def threshold_mask(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean ``[H, W]`` mask ``heatmap >= threshold`` (the evaluation protocol's rule)."""
    return np.asarray(heatmap) >= threshold


def mask_boxes(mask: np.ndarray, heatmap: np.ndarray, score: str = "max") -> list[Box]:
    """One :class:`Box` per 8-connected component of ``mask`` ``[H, W]``, highest score first.

    Components are labelled with scikit-image; the score is the ``max`` or ``mean`` of
    ``heatmap`` ``[H, W]`` inside the component.
    """
    from skimage.measure import label

    if score not in BOX_SCORES:
        raise ConfigError(f"box score must be one of {', '.join(BOX_SCORES)}, got {score!r}")
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    # Label only the rows and columns the mask reaches: a localized finding covers a small part
    # of a 2k x 2k radiograph, and labelling is the costliest step here.
    top, left = int(rows[0]), int(cols[0])
    window = (slice(top, int(rows[-1]) + 1), slice(left, int(cols[-1]) + 1))
    labels = label(mask[window], connectivity=2)
    heat = np.asarray(heatmap)[window]
    boxes = []
    # Statistics inside each component's bounding box only: scipy's labelled reductions sort
    # every pixel (hundreds of ms on a 2k x 2k radiograph).
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        values = heat[region][labels[region] == index]
        region_rows, region_cols = region
        boxes.append(
            Box(
                x0=left + int(region_cols.start),
                y0=top + int(region_rows.start),
                x1=left + int(region_cols.stop),
                y1=top + int(region_rows.stop),
                score=float(values.max() if score == "max" else values.mean()),
                pixels=int(values.size),
            )
        )
    boxes.sort(key=lambda b: (-b.score, -b.pixels))
    return boxes


# --------------------------------------------------------------------------------------------
# Whole path for one image
# --------------------------------------------------------------------------------------------


def square_heatmaps(
    box: Letterbox,
    settings: HeatmapSettings,
    deep_maps: torch.Tensor | None = None,
    shallow_maps: torch.Tensor | None = None,
    level: str | None = None,
    guide: np.ndarray | None = None,
) -> np.ndarray:
    """Similarity maps of one image's prompts -> float32 ``[P, S, S]`` maps over the letterbox square.

    The maps are not normalised and cover the padding too (the published evaluation scores
    them so). The published recipe applies to the ``deep`` level, other levels use the project
    recipe; ``auto`` means ``project`` here (the predictor resolves it from the checkpoint).
    ``guide`` is the input square ``[S, S]`` in ``[0, 1]`` the model saw; the ``guided``
    refinement (``settings.refine``, see :func:`guided_filter`) needs it. An unresolved
    ``refine: auto`` refines when a guide is given and the recipe is not ``published`` (the
    predictor resolves ``auto`` and passes the guide whenever it refines).
    """
    level = check_level(level or settings.level)
    size = box.size
    if level in ("deep", "fused") and deep_maps is None:
        raise ValueError(f"level {level!r} needs deep_maps")
    if level in ("shallow", "fused") and shallow_maps is None:
        raise ValueError(f"level {level!r} needs shallow_maps")
    recipe = "project" if settings.recipe == "auto" else settings.recipe
    refine = resolved_refine(settings.refine, recipe)
    if settings.refine == "auto" and guide is None:
        refine = "off"
    if refine == "guided" and (guide is None or guide.shape != (size, size)):
        got = None if guide is None else guide.shape
        raise ValueError(f"refine 'guided' needs the [{size}, {size}] input square as its guide, got {got}")
    deep_cells = deep_maps.shape[-1] if deep_maps is not None else max(1, shallow_maps.shape[-1] // 2)
    if level == "deep" and settings.recipe == "published":
        squares = published_squares(deep_maps, size).numpy()
    else:
        squares = _project_squares(box, settings, deep_maps, shallow_maps, level, deep_cells)
    if refine == "guided":
        radius_px = max(1, int(round(settings.guide_cells * size / deep_cells)))
        squares = guided_filter(guide, squares, radius_px, settings.guide_eps)
    return squares


def _project_squares(
    box: Letterbox,
    settings: HeatmapSettings,
    deep_maps: torch.Tensor | None,
    shallow_maps: torch.Tensor | None,
    level: str,
    deep_cells: int,
) -> np.ndarray:
    """The project recipe's squares ``[P, S, S]``: upsampled (and fused), then smoothed."""
    size = box.size
    if level == "deep":
        squares = to_square(deep_maps, size)
    elif level == "shallow":
        squares = to_square(shallow_maps, size)
    else:
        squares = fuse(to_square(deep_maps, size), to_square(shallow_maps, size), box, settings.fused_weights)
    # Smoothing is defined in deep-feature cells so it scales with the input size.
    sigma_px = settings.sigma_cells * size / deep_cells
    return np.stack([smooth(square, sigma_px) for square in squares.detach().cpu().numpy()])


def render_heatmaps(
    box: Letterbox,
    settings: HeatmapSettings,
    deep_maps: torch.Tensor | None = None,
    shallow_maps: torch.Tensor | None = None,
    level: str | None = None,
    guide: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Similarity maps of one image's prompts -> float32 heatmaps ``[H, W]`` in ``[-1, 1]``.

    Args:
        box: the letterbox of the image (its ``size`` is the model input square S).
        settings: recipe, smoothing and fusion settings.
        deep_maps: ``[P, h3, w3]`` from :func:`deep_similarity` (needed for ``deep``/``fused``).
        shallow_maps: ``[P, h2, w2]`` from :func:`shallow_similarity` (``shallow``/``fused``).
        level: overrides ``settings.level``.
        guide: the input square ``[S, S]`` in ``[0, 1]`` (needed by ``refine: guided``).

    Returns:
        P heatmaps on the original pixel grid.
    """
    squares = square_heatmaps(box, settings, deep_maps, shallow_maps, level, guide)
    return [to_original_heatmap(square, box) for square in squares]
