"""OHIF viewer end to end, in a real headless Chromium: Orthanc (DICOMweb) -> AFLoc Label -> OHIF.

``tests/browser/run_in_netns.sh`` runs, inside a private network namespace (``unshare -n``,
loopback only), ``scripts/start_ohif_mode.sh`` (Orthanc with the demo CR and DX images, then the
server with ``--studies http://127.0.0.1:8042/dicom-web``) and ``tests/browser/ohif_e2e.js``
(Playwright): study list, the CR study in the AFLoc mode, a prompt typed into the MONAI Label
panel's options, Auto-Segmentation -> Run. This test then checks what came back:

- every ``/ohif/`` file answered 200 and no request to the server failed;
- both demo studies are listed;
- OHIF's labelmap holds exactly the label the server sent (voxel count, non-zero count, hash);
- the overlay is on screen where the label says: the pixels that changed between the viewport
  screenshots before and after match the label mask mapped onto the drawn image (IoU);
- the images arrived through DICOMweb on their own grid with their own spacing (DX 0.39 mm;
  the CR's spacing is unknown in its header and reported as such).

Screenshots land in ``test-artifacts/ohif/`` (``test-artifacts/ohif.png`` is the page with the
overlay). ``docs/images/ohif.png`` is written when it does not exist yet or when
``AFLOC_UPDATE_DOCS_IMAGES=1``, so ordinary runs leave the tracked file alone.

Needs root (for ``unshare``) and the system packages of ``scripts/install_system_deps.sh``;
without them the test is skipped, except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.browser_runs import REPO_ROOT, read_result, require_stack, run_in_netns, server_log_tail

ARTIFACTS = REPO_ROOT / "test-artifacts"
DOCS_IMAGE = REPO_ROOT / "docs" / "images" / "ohif.png"
PROMPT = "right pleural effusion"
#: Wall-clock limit of the whole run (server start included; a run takes about 60 s).
RUN_TIMEOUT_S = 240
#: MONAI Label answers "is a training running?" with 404 when none is: not an error.
EXPECTED_API_404 = "/train/?check_if_running=true"
DX_SPACING_MM = 400.0 / 1024

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e2e_run(afloc_checkpoint, tmp_path_factory) -> dict:
    """Run the browser check once; its result.json plus the output folder."""
    require_stack("OHIF end-to-end")
    out = tmp_path_factory.mktemp("ohif-e2e")
    launch = run_in_netns(out, [afloc_checkpoint, PROMPT], RUN_TIMEOUT_S)
    _keep_artifacts(out)
    if launch.timed_out:
        pytest.fail(f"the OHIF end-to-end run took over {RUN_TIMEOUT_S} s\n{server_log_tail(out)}")
    result = read_result(out / "result.json")
    assert launch.returncode == 0 and result.get("ok"), (
        f"browser run failed (exit {launch.returncode}): {result.get('error')}\n{launch.output_tail()}\n{server_log_tail(out)}"
    )
    return {"result": result, "out": out, "dicomweb": read_result(out / "dicomweb.json")}


def _keep_artifacts(out: Path) -> None:
    target = ARTIFACTS / "ohif"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("result.json", "dicomweb.json", "study-list.png", "viewport-before.png", "viewport-after.png", "ohif.png", "failure.png", "server.log", "label.nrrd"):
        if (out / name).is_file():
            shutil.copyfile(out / name, target / name)
    if (out / "ohif.png").is_file():
        shutil.copyfile(out / "ohif.png", ARTIFACTS / "ohif.png")
        if not DOCS_IMAGE.exists() or os.environ.get("AFLOC_UPDATE_DOCS_IMAGES") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "ohif.png", DOCS_IMAGE)


def test_viewer_files_all_load(e2e_run):
    result = e2e_run["result"]
    ohif = result["ohifResponses"]
    assert len(ohif) > 20, f"only {len(ohif)} viewer files were requested"
    broken = [r for r in ohif if r["status"] != 200]
    assert not broken, f"viewer files that did not load: {broken}"
    # Sub-folder files (assets/...) are the ones MONAI Label's own route answers with index.html.
    declared = result["declaredFiles"]
    in_assets = [f for f in declared if "/ohif/assets/" in f["url"]]
    assert len(in_assets) >= 5, f"the page declares few files under /ohif/assets/: {declared}"
    wrong = [f for f in declared if f["status"] != 200 or "text/html" in (f["contentType"] or "")]
    assert not wrong, f"declared viewer files that do not load as themselves: {wrong}"
    base = "http://127.0.0.1:8000"
    # ERR_ABORTED: the browser itself cancelled a load when the test navigated away.
    local_failures = [
        r for r in result["failedRequests"] if r["url"].startswith(base) and r["error"] != "net::ERR_ABORTED"
    ]
    assert not local_failures, f"requests to the server failed: {local_failures}"
    unexpected = [r for r in result["apiErrors"] if not r["url"].endswith(EXPECTED_API_404)]
    assert not unexpected, f"server API errors seen by the page: {unexpected}"
    assert not result["pageErrors"], f"uncaught errors in the page: {result['pageErrors']}"


def test_study_list_shows_demo_studies(e2e_run):
    rows = e2e_run["result"]["studyList"]
    # The modalities column reads "CR\SR": each demo study also holds its SR report.
    modalities = [set(re.findall(r"\b(CR|DX|SR)\b", row)) for row in rows]
    assert any({"CR", "SR"} <= found for found in modalities), rows
    assert any({"DX", "SR"} <= found for found in modalities), rows


def test_prompt_from_panel_reaches_the_server(e2e_run):
    infer = e2e_run["result"]["infer"]
    assert infer["status"] == 200
    assert "output=image" in infer["url"]
    assert infer["params"]["prompt"] == PROMPT
    assert infer["params"]["result_extension"] == ".nrrd"


def test_labelmap_holds_the_label_sent(e2e_run):
    result = e2e_run["result"]
    label, labelmap = result["infer"]["label"], result["labelmap"]
    assert label["sizes"] == [1841, 1955, 1], "label is not on the CR's own pixel grid (columns, rows, 1)"
    assert 0 < label["nonZero"] < label["total"]
    assert labelmap == {"total": label["total"], "nonZero": label["nonZero"], "fnv1a": label["fnv1a"]}


def test_overlay_is_drawn_where_the_label_is(e2e_run):
    """The pixels the overlay tints match the label mask mapped onto the drawn radiograph."""
    import nrrd
    from PIL import Image

    out = e2e_run["out"]
    before = np.asarray(Image.open(out / "viewport-before.png").convert("RGB"), dtype=np.int16)
    after = np.asarray(Image.open(out / "viewport-after.png").convert("RGB"), dtype=np.int16)
    assert before.shape == after.shape
    top, bottom, left, right = _image_rect(before)
    data, _ = nrrd.read(str(out / "label.nrrd"))
    mask = data[:, :, 0].T > 0  # [W, H, 1] -> [H, W]
    shown = Image.fromarray(mask.astype(np.uint8) * 255).resize((right - left, bottom - top), Image.NEAREST)
    expected = np.asarray(shown) > 0
    changed = np.abs(after - before).sum(axis=-1)[top:bottom, left:right] > 40
    union = np.logical_or(expected, changed).sum()
    iou = np.logical_and(expected, changed).sum() / max(union, 1)
    assert changed.any(), "nothing changed on screen after the segmentation"
    assert iou > 0.85, f"overlay does not match the label on screen (IoU {iou:.2f})"
    # Tinted, not replaced: the overlay is a translucent colour, redder than what was below.
    tint = (after - before)[top:bottom, left:right][expected]
    assert np.median(tint[:, 0] - tint[:, 1]) > 10


def _image_rect(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the drawn image: rows/columns mostly not black.

    Overlay text (date, window/level) is thin and fails the "mostly" test.
    """
    lit = rgb.max(axis=-1) > 12
    rows = np.flatnonzero(lit.mean(axis=1) > 0.3)
    cols = np.flatnonzero(lit.mean(axis=0) > 0.3)
    assert rows.size and cols.size, "no image is drawn in the viewport"
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def test_images_arrive_with_their_geometry(e2e_run):
    series = e2e_run["result"]["series"]
    by_shape = {tuple(s["image"]["shape"]): s for s in series.values()}
    assert set(by_shape) == {(1955, 1841), (1024, 1024)}, series
    cr, dx = by_shape[(1955, 1841)], by_shape[(1024, 1024)]
    assert all(s["status"] == 200 for s in series.values())
    assert dx["image"]["spacing_known"] is True
    assert dx["image"]["spacing"] == pytest.approx([DX_SPACING_MM, DX_SPACING_MM])
    # RG1_UNCI.dcm states PixelSpacing 0\0: unknown, so 1 mm with spacing_known false.
    assert cr["image"]["spacing_known"] is False


def test_drafts_and_heatmaps_are_kept_in_dicomweb_mode(e2e_run):
    checks = e2e_run["dicomweb"]
    assert checks.get("infer", {}).get("status") == 200, checks
    assert checks["draft_fetch"]["status"] == 200 and checks["draft_fetch"]["bytes"] > 0, checks
    # The float heatmap on the CR's 1955 x 1841 grid (NIfTI, uncompressed: ~14 MB).
    assert checks["heatmap_fetch"]["status"] == 200 and checks["heatmap_fetch"]["bytes"] > 1955 * 1841 * 4, checks


def test_a_final_label_is_stored_as_dicom_seg_in_dicomweb_mode(e2e_run):
    checks = e2e_run["dicomweb"]
    assert checks.get("save_final", {}).get("status") == 200, checks
    new = set(checks["seg_after"]) - set(checks["seg_before"])
    assert len(new) == 1, f"expected one new SEG series in Orthanc: {checks}"


def test_screenshot_saved(e2e_run):
    page = ARTIFACTS / "ohif.png"
    assert page.is_file() and page.stat().st_size > 50_000
    assert DOCS_IMAGE.is_file()
