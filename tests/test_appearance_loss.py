"""``loss.appearance_consistency``: a sentence's map must not move when only the image's look changes."""

from __future__ import annotations

import pytest
import torch

from afloc_models.map_regularizers import appearance_consistency_loss
from afloc_models.config import AFLocConfig
from afloc_models.errors import ConfigError
from afloc_training.appearance import perturb_appearance


def _batch(k: int = 4, size: int = 48) -> torch.Tensor:
    """Normalised images with a bright square on a gradient, as a crop of a radiograph would be."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    unit = (0.2 + 0.3 * ys).clone()
    unit[16:28, 20:32] = 0.8
    images = unit.expand(k, 1, size, size).clone()
    return (images - 0.5) / 0.5


def test_perturbation_is_reproducible_keeps_geometry_and_range():
    images = _batch()
    a = perturb_appearance(images, torch.Generator().manual_seed(3))
    b = perturb_appearance(images, torch.Generator().manual_seed(3))
    c = perturb_appearance(images, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert a.shape == images.shape and a.dtype == images.dtype
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert (a - images).abs().mean() > 0.02  # the look did change ...
    for i in range(a.shape[0]):  # ... the anatomy did not move: the square is still the brightest
        inside = a[i, 0, 18:26, 22:30].mean()
        outside = torch.cat([a[i, 0, :12].flatten(), a[i, 0, 34:].flatten()]).mean()
        assert inside > outside + 0.3
    with pytest.raises(ValueError, match="K, C, H, W"):
        perturb_appearance(images[0], torch.Generator())


def test_perturbation_follows_the_normalisation_and_the_dtype():
    unit = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    normalised = ((unit - 0.4) / 0.25).to(torch.bfloat16)
    out = perturb_appearance(normalised, torch.Generator().manual_seed(1), mean=0.4, std=0.25)
    assert out.dtype == torch.bfloat16
    back = out.float() * 0.25 + 0.4
    assert float(back.min()) >= -1e-2 and float(back.max()) <= 1.0 + 1e-2


def _features(seed: int = 0, k: int = 3, d: int = 8, h: int = 6, w: int = 6, s: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, h, w, generator=g), torch.randn(k, d, s, generator=g), torch.full((k,), s)


def test_zero_when_the_maps_agree_and_positive_when_they_differ():
    deep, sentences, n = _features()
    assert float(appearance_consistency_loss(deep, sentences, n, deep.clone())) == pytest.approx(0.0, abs=1e-6)
    moved = deep.roll(2, dims=-1)
    assert float(appearance_consistency_loss(deep, sentences, n, moved)) > 0.05


def test_padding_sentences_do_not_count():
    deep, sentences, _ = _features(s=3)
    moved = deep.roll(1, dims=-2)
    one = appearance_consistency_loss(deep, sentences[:, :, :1], torch.full((3,), 1), moved)
    padded = appearance_consistency_loss(deep, sentences, torch.full((3,), 1), moved)
    torch.testing.assert_close(one, padded)


def test_gradient_reaches_only_the_perturbed_read_and_lowers_the_term():
    deep, sentences, n = _features()
    deep.requires_grad_(True)
    perturbed = (deep.detach() + 0.8 * torch.randn(deep.shape, generator=torch.Generator().manual_seed(1)))
    perturbed.requires_grad_(True)
    loss = appearance_consistency_loss(deep, sentences, n, perturbed)
    loss.backward()
    assert deep.grad is None or float(deep.grad.abs().max()) == 0.0  # the clean map is the target
    assert float(perturbed.grad.abs().max()) > 0
    with torch.no_grad():
        stepped = perturbed - 0.5 * perturbed.grad
    assert float(appearance_consistency_loss(deep, sentences, n, stepped)) < float(loss)


def test_shapes_are_checked_and_the_config_validates():
    deep, sentences, n = _features()
    with pytest.raises(ValueError, match="differ in shape"):
        appearance_consistency_loss(deep, sentences, n, deep[:, :, :4])
    with pytest.raises(ValueError, match="one report per image"):
        appearance_consistency_loss(deep, sentences[:2], n, deep)
    with pytest.raises(ConfigError, match="appearance_consistency"):
        AFLocConfig.from_dict({"base": "small", "loss": {"appearance_consistency": -1}})
    with pytest.raises(ConfigError, match="appearance_share"):
        AFLocConfig.from_dict({"base": "small", "loss": {"appearance_share": 0}})


@pytest.mark.slow
def test_training_with_the_term_logs_it_and_adds_it_to_the_total(tmp_path):
    from tests.tiny_runs import TINY_LOSS_RUN, logged_scalars, tiny_run

    result = tiny_run(
        tmp_path,
        "loss: {appearance_consistency: 2.0, appearance_share: 0.5, mirror_consistency: 1.0}\n"
        + TINY_LOSS_RUN,
        max_steps=3, seed=0,
    )
    assert result.steps == 3 and result.val_loss is not None
    names = ("loss", "loss_sentence", "loss_global", "loss_mirror", "loss_appearance")
    scalars = logged_scalars(tmp_path, names)
    assert len(scalars["loss_appearance"]) == 3 and all(a >= 0 for a in scalars["loss_appearance"])
    assert any(a > 0 for a in scalars["loss_appearance"])
    for t, s, g, m, a in zip(*(scalars[name] for name in names)):
        assert t == pytest.approx(s + g + m + 2.0 * a, rel=1e-4)  # both terms ride together
