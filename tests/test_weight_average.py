"""``optim.ema``: the running average of the weights, what validation and checkpoints read, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from afloc_models.config import AFLocConfig
from afloc_models.errors import ConfigError
from afloc_models.model import AFLoc
from afloc_training.phantoms import write_phantom_datastore
from afloc_training.trainer import STATE_FILE, freeze_unused, read_train_state, train
from afloc_training.weight_average import WeightAverage, averaged_tensors

TINY_EMA = """\
base: small
embed_dim: 32
optim: {batch_size: 4, warmup_steps: 2, lr: 0.001, ema: 0.9}
data: {resize: 72, crop: 64, num_workers: 0, val_fraction: 0.2}
"""


def test_the_average_follows_each_update_with_the_warm_up_decay():
    weight = nn.Parameter(torch.zeros(3))
    average = WeightAverage([weight], decay=0.9)
    expected = torch.zeros(3)
    for t, value in enumerate([1.0, 2.0, 4.0, 8.0]):
        with torch.no_grad():
            weight.fill_(value)
        decay = min(0.9, (1 + t) / (10 + t))
        assert average.current_decay() == pytest.approx(decay)
        expected = decay * expected + (1 - decay) * value
        average.update()
        torch.testing.assert_close(average.average[0], expected)
    assert average.updates == 4 and torch.equal(weight.detach(), torch.full((3,), 8.0))


def test_swapped_in_shows_the_average_and_gives_the_trained_weights_back():
    weight = nn.Parameter(torch.tensor([1.0, 2.0]))
    average = WeightAverage([weight], decay=0.5)
    with torch.no_grad():
        weight.copy_(torch.tensor([5.0, 6.0]))
    with average.swapped_in():
        assert torch.equal(weight.detach(), torch.tensor([1.0, 2.0]))
        assert torch.equal(average.trained_state()["trained"][0], torch.tensor([5.0, 6.0]))
        with pytest.raises(RuntimeError, match="swapped"):
            average.update()
    assert torch.equal(weight.detach(), torch.tensor([5.0, 6.0]))
    with pytest.raises(RuntimeError, match="swapped in"):
        average.trained_state()
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([weight], decay=1.0)


def test_averaged_tensors_are_trainable_parameters_and_their_modules_float_buffers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2))
    model[2].requires_grad_(False)
    tensors = averaged_tensors(model)
    names = {id(t) for t in tensors}
    assert id(model[0].weight) in names and id(model[1].running_mean) in names and id(model[1].running_var) in names
    assert id(model[1].num_batches_tracked) not in names  # an integer count is not averaged
    assert id(model[2].weight) not in names  # frozen


def test_ema_must_lie_in_zero_one():
    with pytest.raises(ConfigError, match="optim.ema"):
        AFLocConfig.from_dict({"base": "small", "optim": {"ema": 1.0}})
    assert AFLocConfig.from_dict({"base": "small"}).optim.ema == 0.0  # off unless asked


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ema")
    write_phantom_datastore(root / "data", 12, seed=0, size=64)
    (root / "tiny_ema.yaml").write_text(TINY_EMA)
    return root


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return AFLoc.from_pretrained(folder).state_dict()


@pytest.mark.slow
def test_a_run_saves_the_average_and_a_resume_continues_the_trained_weights(workspace):
    config = workspace / "tiny_ema.yaml"
    whole = train(workspace / "data", workspace / "whole", config=config, epochs=2, seed=0, save_every=0,
                  progress=False, log_dir=workspace / "tb")
    state = read_train_state(whole.checkpoint)
    assert state["average"]["updates"] == whole.steps == 4
    saved = AFLoc.from_pretrained(whole.checkpoint)
    freeze_unused(saved)  # as the trainer did (the small preset also freezes the text body)
    saved.text_encoder.model.requires_grad_(False)
    trained = state["average"]["trained"]
    tensors = averaged_tensors(saved)
    # The checkpoint holds the average, which differs from the weights the optimiser reached.
    assert len(trained) == len(tensors)
    assert any(not torch.equal(t.detach(), w) for t, w in zip(tensors, trained))

    # Stopped after one step and resumed: the same average and the same trained weights.
    calls = []
    first = train(workspace / "data", workspace / "split", config=config, epochs=2, seed=0, save_every=0,
                  progress=False, stop_check=lambda: bool(calls.append(1)) or True, log_dir=workspace / "tb2")
    assert first.steps == 1
    rest = train(workspace / "data", workspace / "split", epochs=2, seed=0, save_every=0, resume=True,
                 progress=False, log_dir=workspace / "tb2")
    assert rest.steps == 4
    a, b = _weights(whole.checkpoint), _weights(workspace / "split")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    resumed = read_train_state(workspace / "split")["average"]
    assert resumed["updates"] == 4
    assert all(torch.equal(x, y) for x, y in zip(resumed["trained"], trained))

    # The validation loss is the average's: an off run on the same trajectory validates differently.
    off_config = workspace / "tiny_off.yaml"
    off_config.write_text(TINY_EMA.replace("ema: 0.9", "ema: 0.0"))
    off = train(workspace / "data", workspace / "off", config=off_config, epochs=2, seed=0, save_every=0,
                progress=False, log_dir=workspace / "tb3")
    assert "average" not in read_train_state(off.checkpoint)
    off_weights = _weights(off.checkpoint)
    saved_trained = {id(t): w for t, w in zip(tensors, trained)}
    named = dict(saved.named_parameters()) | dict(saved.named_buffers())
    same_trajectory = [k for k, t in named.items() if id(t) in saved_trained
                       and torch.equal(off_weights[k], saved_trained[id(t)])]
    assert len(same_trajectory) == len(trained)  # the average never feeds back into training
    assert whole.val_loss != off.val_loss
    assert (workspace / "whole" / STATE_FILE).is_file()
