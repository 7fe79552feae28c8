"""The fused local-loss kernels (Triton) against the chunked PyTorch reference.

Triton kernels normally need a GPU; here they run in Triton's CPU interpreter
(``TRITON_INTERPRET=1``, which must be set before Triton is imported, hence a subprocess per
check). Same forward scores and the same gradients within 1e-5 in float32, on shapes chosen to
hit every edge of the tiling: region counts that are not a multiple of the tile, word counts
that are not a power of two, feature widths that are not a multiple of the dot chunk, texts
with a single valid position, more texts than images and channels-last image features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afloc_models.losses import local_loss, local_score_matrix

REPO_ROOT = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton", reason="Triton ships with the CUDA build of PyTorch")

_CHECK = r"""
import json, sys
import torch
from afloc_models.losses import local_loss, local_score_matrix

def run(case):
    torch.manual_seed(case["seed"])
    bi, bt, d, h, w, l = case["shape"]
    image = torch.randn(bi, d, h, w) * case["scale"]
    if case.get("channels_last"):
        image = image.contiguous(memory_format=torch.channels_last)
    text = torch.randn(bt, d, l) * case["scale"]
    lengths = torch.tensor(case["lengths"])
    weights = torch.linspace(-1.0, 1.0, bi * bt).view(bi, bt)
    out = {}
    for impl in ("chunked", "fused"):
        img = image.clone().requires_grad_()
        txt = text.clone().requires_grad_()
        if case.get("loss"):
            i2t, t2i = local_loss(img, txt, lengths, impl=impl, chunk_size=2)
            value = i2t + 0.5 * t2i
        else:
            value = (local_score_matrix(img, txt, lengths, 4.0, 5.0, chunk_size=2, impl=impl) * weights).sum()
        value.backward()
        out[impl] = (value.detach(), img.grad, txt.grad)
    ref, got = out["chunked"], out["fused"]
    return {
        "value": abs(float(ref[0] - got[0])),
        "image_grad": float((ref[1] - got[1]).abs().max()),
        "text_grad": float((ref[2] - got[2]).abs().max()),
        "image_grad_scale": float(ref[1].abs().max()),
        "text_grad_scale": float(ref[2].abs().max()),
    }

cases = json.loads(sys.argv[1])
print(json.dumps([run(case) for case in cases]))
"""

CASES = [
    # N = 35 regions (not a multiple of the 32-region tile), L = 9 words, D = 40.
    {"seed": 0, "shape": [3, 4, 40, 5, 7, 9], "lengths": [9, 3, 1, 6], "scale": 0.5},
    # Long texts (L = 21 > one 16-word tile is irrelevant: a full row), D = 72 (> one 64 chunk).
    {"seed": 1, "shape": [2, 2, 72, 6, 6, 21], "lengths": [21, 2], "scale": 0.3, "channels_last": True},
    # The whole loss (both cross entropies), square batch, sharper attention from larger features.
    {"seed": 2, "shape": [4, 4, 24, 4, 5, 5], "lengths": [5, 5, 1, 3], "scale": 1.0, "loss": True},
]


def _run_in_interpreter(cases: list[dict]) -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(cases)],
        capture_output=True, text=True, env=env, timeout=600, cwd=str(REPO_ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fused_matches_chunked_reference_in_float32():
    results = _run_in_interpreter(CASES)
    for case, result in zip(CASES, results):
        assert result["value"] <= 1e-5, (case, result)
        assert result["image_grad"] <= 1e-5 * max(1.0, result["image_grad_scale"]), (case, result)
        assert result["text_grad"] <= 1e-5 * max(1.0, result["text_grad_scale"]), (case, result)
        # The comparison is not vacuous: gradients are of order 1e-2 or larger.
        assert result["image_grad_scale"] > 1e-3 and result["text_grad_scale"] > 1e-3, result


def test_auto_stays_on_the_chunked_path_on_cpu_and_imports_no_triton():
    code = (
        "import sys, torch\n"
        "from afloc_models.losses import local_loss\n"
        "i = torch.randn(2, 8, 3, 3, requires_grad=True); t = torch.randn(2, 8, 4)\n"
        "sum(local_loss(i, t, torch.tensor([4, 2]))).backward()\n"
        "print('triton' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_auto_is_the_chunked_path_on_cuda_too():
    """The fused kernels measured 2.7x slower than the chunked path on an H200
    (docs/records/train-step-h200-2026-12-04.json): ``auto`` must not pick them on a GPU."""
    from afloc_models.losses import _use_fused

    assert _use_fused("auto", torch.device("cuda")) is False
    assert _use_fused("auto", torch.device("cpu")) is False
    assert _use_fused("chunked", torch.device("cuda")) is False


def test_fused_on_cpu_without_interpreter_is_a_clear_error():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs Triton's interpreter")
    image, text = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 4)
    with pytest.raises(RuntimeError, match="CUDA"):
        local_score_matrix(image, text, torch.tensor([4, 2]), impl="fused")
    with pytest.raises(ValueError, match="'auto', 'fused' or 'chunked'"):
        local_score_matrix(image, text, torch.tensor([4, 2]), impl="flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_checks.sh)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_on_cuda_matches_the_chunked_path(dtype):
    """On a GPU, at a publication-like shape: float32 to 1e-5, bfloat16 within bf16 tolerance."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    bi = bt = 16
    image = (torch.randn(bi, 768, 19, 19, device=device) * 0.05).to(dtype)
    text = (torch.randn(bt, 768, 40, device=device) * 0.05).to(dtype)
    lengths = torch.randint(1, 41, (bt,), device=device)
    weights = torch.randn(bi, bt, device=device)
    results = {}
    for impl in ("chunked", "fused"):
        img = image.clone().requires_grad_()
        txt = text.clone().requires_grad_()
        # The reference runs in float32 on the same (rounded) inputs.
        ref_img, ref_txt = (img.float(), txt.float()) if impl == "chunked" else (img, txt)
        scores = local_score_matrix(ref_img, ref_txt, lengths, 4.0, 5.0, chunk_size=4, impl=impl)
        (scores.float() * weights).sum().backward()
        results[impl] = (scores.float().detach(), img.grad.float(), txt.grad.float())
    tol = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}[dtype]
    for ref, got in zip(results["chunked"], results["fused"]):
        scale = ref.abs().max().item()
        torch.testing.assert_close(got / scale, ref / scale, **tol)
