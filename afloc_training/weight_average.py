"""An exponential moving average of the weights a run trains (``optim.ema``).

The trainer keeps, beside the weights the optimiser updates, their running average
``avg <- decay * avg + (1 - decay) * weight`` after every update. Validation reads the average and
the checkpoint stores it (it is what the predictor serves); the weights the optimiser works on
travel in the training state so a resumed run continues them exactly.

The averaged entries are the trainable parameters and the floating-point buffers beside them
(batch-norm running statistics), so a network read with averaged weights also has normalisation
statistics of the same mix. Early on, the average follows the weights faster
(``decay_t = min(decay, (1 + t) / (10 + t))`` at update ``t``), so a short run is not dominated by
its random initialisation.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn


def averaged_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the average follows: trainable parameters and floating-point buffers.

    Buffers are taken from the modules that own a trainable parameter (a frozen text body keeps
    its own, unchanged).
    """
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        tensors.extend(own)
        if own:
            tensors.extend(b for b in module.buffers(recurse=False) if b.is_floating_point())
    return tensors


class WeightAverage:
    """Exponential moving average of ``tensors`` (shapes kept, one copy each)."""

    def __init__(self, tensors: Sequence[torch.Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.tensors = list(tensors)
        self.decay = decay
        self.updates = 0
        self.average = [t.detach().clone() for t in self.tensors]
        self._swapped = False

    def current_decay(self) -> float:
        """The decay the next update uses (lower for the first updates)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average (call after each optimiser step)."""
        if self._swapped:
            raise RuntimeError("update() while the averaged weights are swapped in")
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.average, [t.detach() for t in self.tensors], weight)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; the trained ones come back after."""
        with torch.no_grad():
            self._swap()
        try:
            yield
        finally:
            with torch.no_grad():
                self._swap()

    def _swap(self) -> None:
        for tensor, average in zip(self.tensors, self.average):
            held = tensor.detach().clone()
            tensor.copy_(average)
            average.copy_(held)
        self._swapped = not self._swapped

    # ------------------------------------------------------------------------ state
    def trained_state(self) -> dict[str, Any]:
        """What a resumed run needs, taken while the averaged weights are swapped in: the weights
        the optimiser was working on (then held in ``average``) and the update count."""
        if not self._swapped:
            raise RuntimeError("trained_state() is read while the averaged weights are swapped in")
        return {"updates": self.updates, "trained": [a.detach().cpu().clone() for a in self.average]}

    @torch.no_grad()
    def restore(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint whose weights are the average: the model's current values
        become the average, and the trained weights of ``state`` go back into the model."""
        trained = state["trained"]
        if len(trained) != len(self.tensors) or any(a.shape != t.shape for a, t in zip(trained, self.tensors)):
            raise ValueError("the saved weights do not match this model's averaged tensors")
        for tensor, average, saved in zip(self.tensors, self.average, trained):
            average.copy_(tensor)
            tensor.copy_(saved.to(tensor.device, tensor.dtype))
        self.updates = int(state["updates"])
