"""Which cells the sentence attention covers in training, and what the served maps show of them.

**The edge** (``loss.border_cells``). A model may put attention on the cells at the image's edge:
measured on the served `small` models, 7-9 % of the map peaks on the independently written
external phantoms lay within 4 % of the edge and none of them inside a lesion (docs/quality-log.md,
eighteenth session). With ``loss.border_cells: k`` the sentence level attends over the interior
cells only, ``k`` rings in from every side of the square grid, and the predictor holds those rings
at each map's interior minimum, so a map never points where the model was not trained to look.

**Sink cells** (``image.sink_cells``). Learned vectors appended to every image's regions: a place
for attention a sentence cannot use. They are weights of the image encoder and never on a map.

- :func:`interior`: ``[B, D, H, W]`` -> ``[B, D, H - 2k, W - 2k]`` (training).
- :func:`with_sink`: ``[B, D, H, W]`` and ``[D, K]`` -> ``[B, D, H * W + K, 1]`` (training).
- :func:`hold_border`: ``[P, h, w]`` maps with their ``k`` outer rings set to the map's interior
  minimum (serving).

Both measured on ``small`` and off in every preset (docs/quality-log.md, nineteenth session).
"""

from __future__ import annotations

import torch

from afloc_models.errors import ConfigError


def _check(cells: int, height: int, width: int) -> None:
    if cells < 0:
        raise ConfigError(f"loss.border_cells must be >= 0 (0: off), got {cells}")
    if 2 * cells >= min(height, width):
        raise ConfigError(
            f"loss.border_cells {cells} leaves no interior cell on a {height}x{width} feature grid; "
            f"use at most {(min(height, width) - 1) // 2} or a larger data.crop"
        )


def interior(features: torch.Tensor, cells: int) -> torch.Tensor:
    """The interior of a feature grid ``[..., H, W]`` -> ``[..., H - 2 cells, W - 2 cells]``."""
    if cells == 0:
        return features
    _check(cells, *features.shape[-2:])
    return features[..., cells:-cells, cells:-cells]


def border_mask(height: int, width: int, cells: int, device: torch.device | None = None) -> torch.Tensor:
    """``[height, width]`` bool, True on the ``cells`` outermost rings."""
    _check(cells, height, width)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_in = (rows >= cells) & (rows < height - cells)
    col_in = (cols >= cells) & (cols < width - cells)
    return ~(row_in[:, None] & col_in[None, :])


def hold_border(maps: torch.Tensor, cells: int) -> torch.Tensor:
    """Maps ``[P, h, w]`` with their ``cells`` outer rings set to each map's interior minimum."""
    if cells == 0:
        return maps
    ring = border_mask(maps.shape[-2], maps.shape[-1], cells, maps.device)
    low = interior(maps, cells).flatten(1).min(dim=1).values[:, None, None]
    return torch.where(ring, low.to(maps.dtype), maps)


def with_sink(regions: torch.Tensor, sink: torch.Tensor | None) -> torch.Tensor:
    """Deep regions ``[B, D, H, W]`` and learned cells ``[D, K]`` -> ``[B, D, H * W + K, 1]``, the
    grid flattened into one column (the local loss reads regions as a flat list)."""
    if sink is None:
        return regions
    flat = regions.flatten(2)
    cells = sink.to(flat.dtype)[None].expand(flat.shape[0], -1, -1)
    return torch.cat([flat, cells], dim=2)[..., None]
