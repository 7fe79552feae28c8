"""The AFLoc panel in OHIF, end to end in a real headless Chromium: Orthanc -> server -> panel.

``tests/browser/run_in_netns.sh ... panel`` runs, inside a private network namespace
(``unshare -n``, loopback only), Orthanc with the demo CR and DX studies, the server (small
untrained checkpoint) and ``tests/browser/ohif_panel_e2e.js``, which works the panel as a user
does: study list -> double-click the CR study (it opens in the AFLoc mode) -> type a prompt
into the focused box -> Enter; opacity and threshold sliders; Accept; Keep draft; two prompts; a
finding from the report; a bad prompt and an unreachable server; the DX study opened with its
row's mode button; a run after the served checkpoint was moved away (no model). This module then checks, on the saved
screenshots and the server's own data:

- the user actions: three from the study list (double-click, type, Enter), the box has the focus;
- nothing was fetched from outside the machine and the viewer's font is the local Inter;
- the heatmap on screen (opacity 100 %) decodes, through the panel's colour map, to the server's
  heatmap (correlation), placed on the drawn radiograph;
- the outline on screen (opacity 0) is the boundary of the server's mask, before and after the
  threshold slider moved, with no request to the server for the move; the browser's own label
  equals the server's label at both thresholds (and for two prompts);
- Accept stored a DICOM-SEG in Orthanc that highdicom reads back as the server's mask at the
  slider's threshold, its segment named by the prompt and the model version in the series
  description; Keep draft stored another one and the ``afloc_draft`` label; both are listed;
- a report's findings (not its negations) are one-click prompts; errors are shown in the panel.

Screenshots go to ``test-artifacts/ohif-panel/``; ``docs/images/ohif-panel-*.png`` are written
when missing or when ``AFLOC_UPDATE_DOCS_IMAGES=1``. Needs root and the system packages of
``scripts/install_system_deps.sh``; without them the test is skipped, except under CI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.browser_runs import DOCS_IMAGES, REPO_ROOT, keep_artifacts, read_result, require_stack, run_in_netns, server_log_tail
from tests.test_ohif_e2e import _image_rect

ARTIFACTS = REPO_ROOT / "test-artifacts" / "ohif-panel"
PROMPT = "right pleural effusion"
SECOND_PROMPT = "cardiomegaly"
REPORT = "FINDINGS: Moderate right pleural effusion. No pneumothorax. Mild cardiomegaly."
THRESHOLD_MOVED = 0.55
RUN_TIMEOUT_S = 420
SEGMENT_COLORS = [(242, 77, 64), (51, 166, 242)]
OUTLINE_PX = 2
#: Screenshots copied to docs/images/ as ohif-panel-<name>.
DOC_SHOTS = ("open", "heatmap", "threshold", "accepted", "two-prompts", "report", "error", "study-list", "dx", "no-model")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(afloc_checkpoint, tmp_path_factory) -> dict:
    require_stack("the AFLoc panel test")
    out = tmp_path_factory.mktemp("ohif-panel")
    # A copy of the checkpoint: the browser run moves it aside for a moment ("no model").
    served = shutil.copytree(afloc_checkpoint, tmp_path_factory.mktemp("ohif-panel-ckpt") / "checkpoint")
    launch = run_in_netns(
        out, [served, PROMPT, "CR", "panel"], RUN_TIMEOUT_S,
        env={"AFLOC_E2E_REPORT": REPORT, "AFLOC_E2E_NO_MODEL_CHECK": "1"},
    )
    keep_artifacts(out, ARTIFACTS, "panel", DOC_SHOTS)
    result = read_result(out / "panel-result.json")
    assert not launch.timed_out, f"the panel run took over {RUN_TIMEOUT_S} s\n{server_log_tail(out)}"
    assert launch.returncode == 0 and result.get("ok"), (
        f"panel run failed (exit {launch.returncode}): {result.get('error')}\n{launch.output_tail()}\n{server_log_tail(out)}"
    )
    return {"result": result, "out": out}


def _record(name: str, value: float) -> None:
    """Keep a measured figure in test-artifacts/ohif-panel/metrics.json (for the docs)."""
    path = ARTIFACTS / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = round(float(value), 4)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------------
# Screen geometry and the server's data
# --------------------------------------------------------------------------------------------


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _heatmap(path: Path) -> np.ndarray:
    import nibabel as nib

    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    return data.reshape(data.shape[0], data.shape[1]).T  # [W, H] -> [H, W]


def _label(path: Path) -> np.ndarray:
    import nrrd

    data, _ = nrrd.read(str(path))
    return data[:, :, 0].T  # [W, H, 1] -> [H, W]


def _screen_grid(
    run: dict, shape: tuple[int, int], state: str = "panelAtT0", rect_shot: str = "viewport-before.png"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image row and column of every screen pixel, and where the image is (nearest pixel).

    The image rectangle is the one the panel reported drawing into (in the page state
    ``state``), after checking it against the radiograph found in the screenshot ``rect_shot``
    (within 2 px).
    """
    before = _png(run["out"] / rect_shot)
    top, bottom, left, right = _image_rect(before)
    corners = np.asarray(run["result"][state]["lastDraw"]["imageCorners"], dtype=float)
    x0, y0 = corners[0]
    x1, y1 = corners[3]
    assert abs(x0 - left) <= 2 and abs(x1 - right) <= 2 and abs(y0 - top) <= 2 and abs(y1 - bottom) <= 2, (
        f"the panel draws into {corners[0]}-{corners[3]} but the radiograph is at "
        f"({left}, {top})-({right}, {bottom}) on screen"
    )
    height, width = shape
    v, u = np.mgrid[0 : before.shape[0], 0 : before.shape[1]]
    cols = np.floor((u + 0.5 - x0) * width / (x1 - x0)).astype(int)
    rows = np.floor((v + 0.5 - y0) * height / (y1 - y0)).astype(int)
    inside = (cols >= 0) & (rows >= 0) & (cols < width) & (rows < height)
    return rows.clip(0, height - 1), cols.clip(0, width - 1), inside


def _outline(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label whose neighbour within OUTLINE_PX (4 directions) differs: the panel's rule."""
    edge = np.zeros(labels.shape, dtype=bool)
    padded = np.pad(labels, OUTLINE_PX, constant_values=-1)
    h, w = labels.shape
    for d in range(1, OUTLINE_PX + 1):
        for dy, dx in ((0, d), (0, -d), (d, 0), (-d, 0)):
            shifted = padded[OUTLINE_PX + dy : OUTLINE_PX + dy + h, OUTLINE_PX + dx : OUTLINE_PX + dx + w]
            edge |= shifted != labels
    return edge & (labels > 0)


def _near(mask: np.ndarray, px: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=px)


def _drawn_in(shot: np.ndarray, color: tuple[int, int, int], tolerance: int = 24) -> np.ndarray:
    return np.abs(shot - np.asarray(color)).max(axis=-1) <= tolerance


def _assert_outline_matches(run: dict, shot_name: str, label: np.ndarray, **grid: str) -> float:
    rows, cols, inside = _screen_grid(run, label.shape, **grid)
    screen_label = np.where(inside, label[rows, cols], 0).astype(np.int16)
    expected = _outline(screen_label)
    drawn = _drawn_in(_png(run["out"] / shot_name), SEGMENT_COLORS[0])
    assert expected.sum() > 100 and drawn.sum() > 100, (expected.sum(), drawn.sum())
    precision = (drawn & _near(expected, 1)).sum() / drawn.sum()
    recall = (expected & _near(drawn, 1)).sum() / expected.sum()
    _record(f"{shot_name} outline precision", precision)
    _record(f"{shot_name} outline recall", recall)
    assert precision > 0.97 and recall > 0.97, f"{shot_name}: outline precision {precision:.3f}, recall {recall:.3f}"
    return recall


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_prompt_to_overlay_in_open_type_enter(run):
    result = run["result"]
    assert result["focusAtOpen"] == "afloc-prompt", "the prompt box does not have the focus when the study opens"
    # The panel says what the served model was trained on (the test checkpoint's own metadata).
    assert "trained on: test: untrained, random weights" in result["modelLine"], result["modelLine"]
    # ... and how the maps were read: a project checkpoint's sided prompts are mirror averaged and
    # every map follows the image's edges (the reply's `reading`).
    assert result["infer"]["body"]["reading"]["mirror"] == "sides"
    assert result["infer"]["body"]["reading"]["refine"] == "guided"
    assert ("Maps: a prompt that names a side is the mean of the image and its mirror. "
            "Heat follows the image's edges (guided filter).") in result["messageAfterRun"], result["messageAfterRun"]
    kinds = [a["kind"] for a in result["actions"]]
    assert kinds == ["dblclick", "type", "key"], result["actions"]
    # From the study list: open (one double-click on the study's row), type, Enter: the overlay is drawn.
    assert result["actionsToOverlay"]["fromStudyList"] <= 3, result["actionsToOverlay"]
    assert result["actionsToOverlay"] == {"fromStudyList": 3, "afterOpen": 3}
    assert result["afterRun"]["drawCount"] > 0 and result["afterRun"]["result"]["prompts"] == [PROMPT]
    # The double-click opened the study in the AFLoc mode inside the page (no reload), through
    # lib/ohif/afloc_study_list.js, which read the study's modalities and the mode's verdict.
    opened = result["openedBy"]
    assert opened["samePage"], opened
    assert opened["url"].startswith("/ohif/afloc?StudyInstanceUIDs="), opened
    assert opened["lastOpen"]["valid"] and "CR" in opened["lastOpen"]["modalities"].split("\\"), opened


def test_expanded_row_mode_buttons_still_open_studies(run):
    """The DX study was opened the stock way: a click expands its row, the mode's button opens it."""
    result = run["result"]
    assert "mode-afloc" in result["dxModeButtons"], result["dxModeButtons"]
    assert len(result["dxModeButtons"]) >= 2, result["dxModeButtons"]  # the stock modes are still offered


def test_nothing_is_fetched_from_outside_and_the_font_is_local(run):
    result = run["result"]
    assert result["external"] == [], f"requests beyond the server: {result['external']}"
    assert result["fonts"]["interLoaded"] and any(f.startswith("Inter") for f in result["fonts"]["faces"])
    assert not result["pageErrors"], result["pageErrors"]
    # The bad prompt and the run without a model are the only refused requests.
    assert [e["status"] for e in result["apiErrors"]] == [400, 503], result["apiErrors"]
    assert "/infer/afloc" in result["apiErrors"][1]["url"]


def test_heatmap_on_screen_is_the_servers_heatmap(run):
    """Opacity 100 %: each screen pixel's colour, looked up in the panel's colour map, is the heat."""
    heat = _heatmap(run["out"] / "heatmap-1.nii")
    rows, cols, inside = _screen_grid(run, heat.shape)
    shot = _png(run["out"] / "viewport-heat-full.png")
    x = np.arange(256) / 255
    lut = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=1) * 255
    # At full opacity a pixel shows its colour-map entry exactly; outlines and name tags do not.
    lut = np.floor(lut + 0.5).astype(np.int64)  # Math.round of the panel
    keys = (lut[:, 0] << 16) | (lut[:, 1] << 8) | lut[:, 2]
    order = np.argsort(keys, kind="stable")
    pixels = shot[inside].astype(np.int64)
    wanted = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    position = np.searchsorted(keys[order], wanted).clip(0, len(keys) - 1)
    on_map = keys[order][position] == wanted
    index = order[position]
    decoded = index[on_map] / 127.5 - 1
    expected = heat[rows[inside], cols[inside]][on_map]
    assert on_map.mean() > 0.9
    correlation = np.corrcoef(decoded, expected)[0, 1]
    _record("heatmap correlation", correlation)
    _record("heatmap mean abs error", np.abs(decoded - expected).mean())
    _record("heatmap pixels decoded", on_map.mean())
    assert correlation > 0.97, f"screen heat vs server heat: r = {correlation:.3f}"
    assert np.abs(decoded - expected).mean() < 0.05
    # A mirrored heatmap must not pass. The server mirror averages its maps, which leaves an
    # untrained model's (mostly position-driven) map nearly symmetric (r ~ 0.96 with its own
    # mirror), so compare how far each orientation is from a perfect match: the screen must be
    # far closer to the server's map than to its mirror.
    mirrored = heat[:, ::-1][rows[inside], cols[inside]][on_map]
    mirrored_correlation = np.corrcoef(decoded, mirrored)[0, 1]
    _record("heatmap correlation, mirrored", mirrored_correlation)
    assert 1 - mirrored_correlation > 20 * (1 - correlation), (correlation, mirrored_correlation)


def test_outline_is_the_servers_mask(run):
    result = run["result"]
    label = _label(run["out"] / "label-t0.nrrd")
    assert result["panelAtT0"]["threshold"] == pytest.approx(0.3)
    assert result["panelAtT0"]["result"]["label"] == {k: result["serverLabelT0"][k] for k in ("total", "nonZero", "fnv1a")}
    _assert_outline_matches(run, "viewport-outline-t0.png", label)


def test_threshold_slider_redraws_the_servers_mask_without_a_request(run):
    result = run["result"]
    assert result["requestsDuringSlider"] == 0
    assert result["panelAtT1"]["threshold"] == pytest.approx(THRESHOLD_MOVED)
    server = result["serverLabelT1"]
    assert result["panelAtT1"]["result"]["label"] == {k: server[k] for k in ("total", "nonZero", "fnv1a")}
    assert server["nonZero"] < result["serverLabelT0"]["nonZero"]
    _assert_outline_matches(run, "viewport-outline-t1.png", _label(run["out"] / "label-t1.nrrd"))
    # And the picture really changed.
    t0 = _drawn_in(_png(run["out"] / "viewport-outline-t0.png"), SEGMENT_COLORS[0])
    t1 = _drawn_in(_png(run["out"] / "viewport-outline-t1.png"), SEGMENT_COLORS[0])
    assert (t0 ^ t1).sum() > 0.3 * t1.sum()


def test_overlay_follows_the_image_when_the_view_pans(run):
    """Middle-button drag pans the radiograph; the outline moves with it and still fits the mask."""
    result = run["result"]
    moved = np.asarray(result["panelPanned"]["lastDraw"]["imageCorners"][0]) - np.asarray(result["panelAtT1"]["lastDraw"]["imageCorners"][0])
    assert np.abs(moved).max() > 20, f"the view did not pan: {moved}"
    _assert_outline_matches(
        run, "viewport-outline-panned.png", _label(run["out"] / "label-t1.nrrd"),
        state="panelPanned", rect_shot="viewport-outline-panned.png",
    )


def test_two_prompts_have_distinct_colours_and_the_servers_label(run):
    result = run["result"]
    assert result["panelTwo"]["result"]["prompts"] == [PROMPT, SECOND_PROMPT]
    server = result["serverLabelTwo"]
    assert result["panelTwo"]["result"]["label"] == {k: server[k] for k in ("total", "nonZero", "fnv1a")}
    shot = _png(run["out"] / "viewport-two.png")
    label = _label(run["out"] / "label-two.nrrd")
    for value, color in enumerate(SEGMENT_COLORS, start=1):
        if (label == value).any():
            assert _drawn_in(shot, color).sum() > 100, f"segment {value} is not outlined in its colour {color}"


def test_accept_stores_the_mask_as_dicom_seg_in_orthanc(run):
    import highdicom as hd

    result = run["result"]
    accept = result["accept"]["body"]
    version = result["panelAtT1"]["result"]["modelVersion"]
    seg = hd.seg.segread(str(run["out"] / "accepted-seg.dcm"))
    assert seg.SeriesInstanceUID == accept["series_instance_uid"]
    assert seg.SeriesDescription == f"AFLoc {version}"
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [PROMPT]
    source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source_uid], combine_segments=True)[0]
    expected = _label(run["out"] / "label-t1.nrrd")  # Accept came after the slider moved
    assert pixels.shape == expected.shape == (1955, 1841)
    assert np.array_equal(pixels > 0, expected > 0)


def test_keep_draft_stores_a_draft_and_both_are_listed(run):
    import highdicom as hd

    result = run["result"]
    draft = result["draft"]["body"]
    version = result["panelAtT1"]["result"]["modelVersion"]
    seg = hd.seg.segread(str(run["out"] / "draft-seg.dcm"))
    assert seg.SeriesDescription == f"AFLoc draft {version}" == draft["series_description"]
    assert draft["draft"]["tag"] == "afloc_draft"
    assert result["draftFetch"]["status"] == 200 and result["draftFetch"]["bytes"] > 0
    assert sorted(result["storedInPanel"]) == sorted([f"AFLoc {version}", f"AFLoc draft {version}"])
    cr_rows = [row for row in result["studyListAfter"] if " CR" in row]
    assert cr_rows and all("SEG" in row for row in cr_rows), result["studyListAfter"]


def test_report_findings_are_one_click_prompts(run):
    result = run["result"]
    assert result["reportPut"]["status"] == 200, result["reportPut"]
    server = result["serverFindings"]
    assert result["reportFindings"] == [f["prompt"] for f in server["findings"]]
    if server["report"] == REPORT:  # ours (a report from a DICOM SR in the PACS may take precedence)
        # Read by the server (GET /afloc/findings): "No pneumothorax." offers nothing.
        assert result["reportFindings"] == ["right pleural effusion", "cardiomegaly"]
    assert result["reportFindings"], "the report offers no finding"
    assert result["reportRun"] == {"status": 200, "prompt": result["reportFindings"][0]}


def test_errors_are_shown_in_the_panel(run):
    result = run["result"]
    assert "300" in result["errorBadPrompt"] and result["errorBadPromptVisible"]
    assert "Cannot reach the AFLoc server" in result["errorServerDown"]


def test_no_model_is_named_in_the_panel(run):
    """The served checkpoint folder moved away: the server's 503 message is shown in the panel."""
    no_model = run["result"]["noModel"]
    assert no_model["status"] == 503, no_model
    assert no_model["visible"]
    assert no_model["message"].startswith("The AFLoc model is not available: no AFLoc checkpoint is being served")
    assert "build_demo.py" in no_model["message"] and no_model["shownText"] == no_model["message"]


def test_the_dx_study_works_the_same(run):
    """The DX phantom (1024 x 1024, 0.39 mm): open, type, Enter; the browser's label is the server's."""
    result = run["result"]
    assert result["dxFocus"] == "afloc-prompt"
    dx = result["panelDx"]["result"]
    assert (dx["width"], dx["height"]) == (1024, 1024)
    server = result["serverLabelDx"]
    assert server["sizes"] == [1024, 1024, 1]
    assert dx["label"] == {k: server[k] for k in ("total", "nonZero", "fnv1a")}


def test_screenshots_saved(run):
    for name in DOC_SHOTS:
        assert (ARTIFACTS / f"panel-{name}.png").is_file(), name
        assert (DOCS_IMAGES / f"ohif-panel-{name}.png").is_file(), name
