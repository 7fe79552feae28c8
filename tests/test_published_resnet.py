"""The image encoder's own ResNet: no monai needed, and checkpoints written with the MONAI backbone load identically."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

from afloc_models.resnet import resnet18, resnet50


def test_image_encoder_imports_without_monai():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["monai"] = None  # any "import monai" now fails
        import torch
        from afloc_models.config import ImageEncoderConfig
        from afloc_models.image_encoder import ImageEncoder
        enc = ImageEncoder(ImageEncoderConfig(arch="resnet18", in_channels=1), 16).eval()
        print(tuple(enc(torch.zeros(1, 1, 64, 64)).deep.shape))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 16, 4, 4)"


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_monai_backbone_weights_load_and_give_the_same_features(arch):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    # The backbone as the earlier image encoder built it.
    monai_net = getattr(nets, arch)(
        spatial_dims=2, n_input_channels=1, conv1_t_stride=2, bias_downsample=False, feed_forward=False
    ).eval()
    for module in monai_net.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ours = {"resnet18": resnet18, "resnet50": resnet50}[arch](in_channels=1).eval()
    assert list(ours.state_dict()) == list(monai_net.state_dict())
    ours.load_state_dict(monai_net.state_dict(), strict=True)
    x = torch.randn(2, 1, 96, 80)
    with torch.no_grad():
        a = monai_net.layer4(monai_net.layer3(monai_net.layer2(monai_net.layer1(
            monai_net.maxpool(monai_net.act(monai_net.bn1(monai_net.conv1(x))))))))
        b = ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.stem(x)))))
    assert torch.equal(a, b)


def test_torchvision_keys_and_features():
    torch.manual_seed(1)
    tv = torchvision.models.resnet50().eval()
    ours = resnet50().eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert sorted(ours.state_dict()) == sorted(state)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        tv_out = tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))))
        ours_out = ours.avgpool(ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.stem(x))))))
    assert torch.equal(tv_out, ours_out)
