"""``benchmarks/gpu_recipe.sh`` end to end on the CPU, at toy sizes.

The script is meant for a lent GPU (issue 13's GPU recipe), where a broken script costs the
session's whole device time. This runs every step of it here: phantoms, the external set linked
in, two configs trained at the same time, scoring, records and summary lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_recipe.sh"

TINY = """base: small
name: {name}
embed_dim: 16
image: {{arch: resnet18, in_channels: 1, deep_stride: 8, base_width: 8}}
optim: {{batch_size: 4, warmup_steps: 2, min_useful_steps: 0}}
data: {{resize: 72, crop: 64, num_workers: 0, hflip: {hflip}}}
"""


def _run(args, env_extra, tmp_path, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           **env_extra}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_usage_and_missing_config_are_clear_errors(tmp_path):
    out = _run([], {}, tmp_path)
    assert out.returncode == 2 and "usage: bash benchmarks/gpu_recipe.sh" in out.stderr
    out = _run([str(tmp_path / "nope.yaml")], {}, tmp_path)
    assert out.returncode == 2 and "nope.yaml' does not exist" in out.stderr
    # Two configs of one file name would write the same run folder and records.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.yaml").write_text("base: small\n")
    out = _run([str(tmp_path / "a" / "same.yaml"), str(tmp_path / "b" / "same.yaml")], {}, tmp_path)
    assert out.returncode == 2 and "two configs are named 'same'" in out.stderr


def test_two_configs_train_side_by_side_and_are_scored(tmp_path):
    from afloc_models.evaluation.external.writer import write_synthetic_set

    # A small synthetic external set made beforehand (the script writes 200 studies when it finds none).
    write_synthetic_set(tmp_path / "work" / "external" / "synthetic", 6, seed=3, size=96)
    configs = []
    for name, hflip in (("plain", 0.0), ("mirrored", 0.5)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(TINY.format(name=name, hflip=hflip))
        configs.append(path.name)  # relative to the caller's folder; the script runs from the repository
    out = _run(configs, {"MINUTES": "0.05", "N_TRAIN": "24", "N_TEST": "8", "BOOTSTRAP": "0",
                         "BACKGROUNDS": "none"}, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = tmp_path / "out"
    assert "training 2 config(s) at once" in (records / "setup.txt").read_text()
    for name in ("plain", "mirrored"):
        result = json.loads((records / f"quality-{name}.json").read_text())
        assert result["config"]["data"]["hflip"] == (0.5 if name == "mirrored" else 0.0)
        assert result["main"]["train"]["steps"] >= 1
        assert set(result["main"]["external"]) == {"synthetic"}
        assert result["main"]["metrics"]["dot"]["cases"] > 0
        assert f"{name} steps " in out.stdout  # the summary line per config
