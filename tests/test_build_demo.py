"""scripts/build_demo.py: the training phantoms draw on the cxr-notes folder the script is given."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CXR_NOTES = REPO.parent / "shared" / "data" / "cxr-notes"  # our machines only


def _build_demo():
    spec = importlib.util.spec_from_file_location("build_demo", REPO / "scripts" / "build_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phantoms_use_the_given_cxr_notes_folder_or_none(tmp_path):
    demo = _build_demo()
    elsewhere = tmp_path / "my-cxr-notes"
    elsewhere.mkdir()
    (elsewhere / "pairs.csv").write_text("id,file,report\n")
    command = demo.phantom_command(tmp_path / "phantoms", elsewhere)
    assert command[command.index("--backgrounds") + 1] == str(elsewhere)
    # A folder without pairs.csv (no cxr-notes here): phantoms only, not the default beside the repo.
    command = demo.phantom_command(tmp_path / "phantoms", tmp_path / "missing")
    assert command[command.index("--backgrounds") + 1] == "none"


@pytest.mark.skipif(not (CXR_NOTES / "pairs.csv").is_file(), reason="shared cxr-notes data not present")
def test_phantom_command_draws_on_real_radiographs_from_a_folder_outside_the_default(tmp_path):
    """The command runs as built (fewer studies): a cxr-notes folder reached only through the
    argument (a link under another name) still gives real backgrounds."""
    demo = _build_demo()
    linked = tmp_path / "notes-elsewhere"
    linked.symlink_to(CXR_NOTES, target_is_directory=True)
    command = demo.phantom_command(tmp_path / "phantoms", linked)
    command[command.index("--n") + 1] = "6"
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    manifest = json.loads((tmp_path / "phantoms" / "ground_truth" / "manifest.json").read_text())
    assert manifest["real_backgrounds"]
