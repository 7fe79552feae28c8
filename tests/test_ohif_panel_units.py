"""Fast checks of the AFLoc OHIF panel's parts, without a browser or Orthanc.

- the panel's JavaScript helpers (``lib/ohif/afloc_panel.js``), run in Node: the threshold and
  overlap rule against the server's own Python (``threshold_mask``, ``combine_masks``) on float32
  heatmaps with values on and next to the threshold; the NIfTI reader on a heatmap the server
  writes; prompt splitting; report findings (negations left out);
- ``lib.ohif_segments``: request checks and the DICOM-SEG it writes over the real CR, read back
  with highdicom (segment labels are the prompts, the model version is in the series description);
- ``lib.ohif_static``: no Google Fonts in the viewer's page or styles, the local Inter font, the
  panel's files, and refusal of paths outside them.

The browser path is in ``tests/test_ohif_panel.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "afloc_label"
PANEL_JS = APP_DIR / "lib" / "ohif" / "afloc_panel.js"
if str(APP_DIR) not in sys.path:
    sys.path.append(str(APP_DIR))

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def _node(script: str, *files: Path) -> dict:
    """Run ``script`` in Node after loading the panel (``panel`` is window.__aflocPanel)."""
    prelude = f"global.window = {{}}; require({json.dumps(str(PANEL_JS))}); const panel = window.__aflocPanel;"
    out = subprocess.run(["node", "-e", prelude + script, *map(str, files)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --------------------------------------------------------------------------------------------
# The panel's JavaScript
# --------------------------------------------------------------------------------------------


@needs_node
def test_panel_registers_an_extension_with_its_panel():
    info = _node(
        "const ext = window.config.extensions[0]; const p = ext.getPanelModule()[0];"
        "console.log(JSON.stringify({id: ext.id, name: p.name, label: p.label, panelId: panel.panelId,"
        " element: p.component().type}));"
    )
    assert info == {"id": "afloc-label", "name": "afloc", "label": "AFLoc", "panelId": "afloc-label.panelModule.afloc", "element": "div"}


def _heatmaps(tmp_path: Path, thresholds: list[float]) -> tuple[np.ndarray, Path]:
    """Three float32 heatmaps in [-1, 1] with many values on and beside each threshold."""
    rng = np.random.default_rng(3)
    maps = rng.uniform(-1, 1, size=(3, 64, 80)).astype(np.float32)
    for t in thresholds:
        f = np.float32(t)
        for value in (f, np.nextafter(f, np.float32(2)), np.nextafter(f, np.float32(-2))):
            spots = rng.integers(0, maps.size, size=200)
            maps.reshape(-1)[spots] = value
    # Equal heat in two prompts at covered pixels: the first prompt wins ties.
    maps[1, :4, :4] = maps[0, :4, :4] = 0.9
    path = tmp_path / "maps.f32"
    maps.tofile(path)
    return maps, path


@needs_node
@pytest.mark.parametrize("threshold", [0.3, 0.55, 0.1, -0.2, 0.7])
def test_browser_threshold_rule_is_the_servers(tmp_path, threshold):
    from afloc_models.inference.heatmap import threshold_mask
    from afloc_training.draft import combine_masks

    maps, path = _heatmaps(tmp_path, [threshold])
    negated = [False, False, True]
    masks = [threshold_mask(h, threshold) if not n else np.zeros(h.shape, bool) for h, n in zip(maps, negated)]
    expected = combine_masks(list(maps), masks)
    got = _node(
        "const fs = require('fs'); const b = fs.readFileSync(process.argv[1]);"
        "const all = new Float32Array(b.buffer, b.byteOffset, b.length / 4); const n = 64 * 80;"
        "const prompts = [0, 1, 2].map((i) => ({negated: i === 2, heat: {data: all.subarray(i * n, (i + 1) * n)}}));"
        f"const label = panel.combinedLabel(prompts, {threshold!r}, null);"
        "console.log(JSON.stringify(Array.from(label)));",
        path,
    )
    assert np.array_equal(np.asarray(got, dtype=np.uint8).reshape(64, 80), expected)


@needs_node
def test_unticked_segments_are_left_out(tmp_path):
    maps, path = _heatmaps(tmp_path, [0.3])
    got = _node(
        "const fs = require('fs'); const b = fs.readFileSync(process.argv[1]);"
        "const all = new Float32Array(b.buffer, b.byteOffset, b.length / 4); const n = 64 * 80;"
        "const prompts = [0, 1, 2].map((i) => ({negated: false, heat: {data: all.subarray(i * n, (i + 1) * n)}}));"
        "console.log(JSON.stringify(Array.from(panel.combinedLabel(prompts, 0.3, [false, true, false]))));",
        path,
    )
    assert np.array_equal(np.asarray(got).reshape(64, 80), np.where(maps[1] >= np.float32(0.3), 2, 0))


@needs_node
def test_nifti_reader_reads_the_servers_heatmap_file(tmp_path):
    from lib.geometry import Geometry
    from lib.label_io import write_heatmap

    heat = np.linspace(-1, 1, 37 * 53, dtype=np.float32).reshape(37, 53)
    path = write_heatmap(tmp_path / "heat.nii", heat, Geometry(shape=(37, 53), spacing=(0.5, 0.7)))
    got = _node(
        "const b = require('fs').readFileSync(process.argv[1]);"
        "const h = panel.parseNifti(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));"
        "console.log(JSON.stringify({w: h.width, h: h.height, data: Array.from(h.data)}));",
        path,
    )
    assert (got["w"], got["h"]) == (53, 37)
    assert np.array_equal(np.asarray(got["data"], dtype=np.float32).reshape(37, 53), heat)


@needs_node
def test_prompts_split_on_semicolons_and_lines():
    got = _node("console.log(JSON.stringify(panel.splitPrompts(' right  pleural effusion;\\n\\ncardiomegaly ;; nodule\\n')));")
    assert got == ["right pleural effusion", "cardiomegaly", "nodule"]


@needs_node
def test_the_reading_note_is_worded_as_the_slicer_module_words_it():
    module_dir = str(REPO_ROOT / "slicer_extension" / "AFLoc")
    if module_dir not in sys.path:
        sys.path.append(module_dir)
    from AFLocLib.client import InferResult  # the Slicer module's pure-Python client

    readings = [None, "old server", {}, {"mirror": "on"}, {"mirror": "off", "refine": "off"},
                {"mirror": "sides", "refine": "guided"}, {"mirror": "on", "refine": "guided"}, {"refine": "guided"}]
    got = _node(f"console.log(JSON.stringify({json.dumps(readings)}.map(panel.readingNote)));")
    want = []
    for reading in readings:
        note = InferResult("i", [], None, None, [], {"reading": reading}, 0.0).reading_note
        want.append(f" {note}" if note else "")
    assert got == want
    assert want[5] == (" Maps: a prompt that names a side is the mean of the image and its mirror. "
                       "Heat follows the image's edges (guided filter).")
    assert want[3] == " Maps: mean of the image and its mirror." and want[4] == "" and want[0] == ""


@needs_node
def test_report_findings_are_the_stated_ones():
    report = (
        "FINDINGS: Moderate right pleural effusion. No pneumothorax. Mild cardiomegaly.\n"
        "There is no focal consolidation. Heart size is normal. Left basilar atelectasis.\n"
        "IMPRESSION: Moderate right pleural effusion."
    )
    got = _node(f"console.log(JSON.stringify(panel.reportFindings({json.dumps(report)})));")
    assert got == ["moderate right pleural effusion", "mild cardiomegaly", "left basilar atelectasis"]
    assert _node("console.log(JSON.stringify(panel.reportFindings('')))") == []


# --------------------------------------------------------------------------------------------
# POST /afloc/segments: checks and the DICOM-SEG
# --------------------------------------------------------------------------------------------


def _params(**overrides) -> str:
    params = {
        "segments": [{"value": 1, "name": "right pleural effusion", "color": [242, 77, 64]}, {"value": 2, "name": "cardiomegaly"}],
        "model_version": "20261128-demo",
        "threshold": 0.3,
    }
    params.update(overrides)
    return json.dumps(params)


@pytest.mark.parametrize(
    "params, message",
    [
        ("", "'params' is missing"),
        ("{", "not JSON"),
        ("[]", "JSON object"),
        (_params(segments=[]), "non-empty list"),
        (_params(segments=[{"value": i, "name": f"f{i}"} for i in range(1, 10)]), "at most 8"),
        (_params(segments=[{"value": 0, "name": "a"}]), "integer 1..255"),
        (_params(segments=[{"value": 1, "name": "  "}]), "prompt text"),
        (_params(segments=[{"value": 1, "name": "x" * 65}]), "DICOM allows 64"),
        (_params(segments=[{"value": 1, "name": "a"}, {"value": 1, "name": "b"}]), "distinct"),
        (_params(model_version=""), "model_version"),
        (_params(threshold="high"), "'threshold' must be a number"),
    ],
)
def test_save_params_are_checked(params, message):
    from lib.errors import BadRequestError
    from lib.ohif_segments import parse_save_params

    with pytest.raises(BadRequestError, match=message):
        parse_save_params(params)


def test_label_bytes_are_checked():
    from lib.errors import BadRequestError
    from lib.ohif_segments import decode_label, parse_save_params

    segments = parse_save_params(_params()).segments
    with pytest.raises(BadRequestError, match="4 x 3 pixels"):
        decode_label(bytes(11), (3, 4), segments)
    with pytest.raises(BadRequestError, match=r"values \[7\] have no segment"):
        decode_label(bytes([0, 7] + [0] * 10), (3, 4), segments)
    with pytest.raises(BadRequestError, match="empty"):
        decode_label(bytes(12), (3, 4), segments)
    label = decode_label(bytes([0, 1, 2] + [0] * 9), (3, 4), segments)
    assert label.shape == (3, 4) and label[0, 1] == 1 and label[0, 2] == 2


def test_series_description_names_the_model_version():
    from lib.ohif_segments import series_description

    assert series_description("final", "v1") == "AFLoc v1"
    assert series_description("draft", "v1") == "AFLoc draft v1"
    assert len(series_description("draft", "x" * 100)) == 64


def test_unsafe_model_version_characters_are_replaced():
    from lib.ohif_segments import parse_save_params

    assert parse_save_params(_params(model_version="run 7\\n<x>")).model_version == "run_7_n_x_"


@pytest.mark.parametrize("kind", ["final", "draft"])
def test_segmentation_over_the_real_cr_reads_back_with_highdicom(tmp_path, kind):
    """Segment 2 unticked (absent): the SEG has segments 1..N without gaps, named by the prompts."""
    import highdicom as hd

    from afloc_models.imaging import read_image
    from lib.geometry import geometry_for
    from lib.ohif_segments import parse_save_params, write_segmentation
    from tests.conftest import rg1_unci_path

    source = rg1_unci_path()
    image = read_image(source)
    geometry = geometry_for(source, image.shape, image.spacing)
    request = parse_save_params(
        _params(segments=[{"value": 1, "name": "right pleural effusion"}, {"value": 2, "name": "nodule"}, {"value": 3, "name": "cardiomegaly"}])
    )
    label = np.zeros(geometry.shape, dtype=np.uint8)
    label[1200:1700, 1000:1500] = 1
    label[600:1100, 700:1300] = 3
    path = write_segmentation(tmp_path / "seg.dcm", label, request, geometry, source, kind)
    seg = hd.seg.segread(str(path))
    expected_description = "AFLoc 20261128-demo" if kind == "final" else "AFLoc draft 20261128-demo"
    assert seg.SeriesDescription == expected_description
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["right pleural effusion", "cardiomegaly"]
    assert [int(d.SegmentNumber) for d in seg.SegmentSequence] == [1, 2]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID],
        combine_segments=True,
    )[0]
    assert np.array_equal(pixels, np.where(label == 3, 2, label))


def test_accepting_needs_a_dicomweb_datastore(tmp_path):
    from lib.errors import BadRequestError
    from lib.ohif_segments import save_segments

    with pytest.raises(BadRequestError, match="DICOMweb datastore"):
        save_segments(object(), "image1", "final", bytes(4), _params())
    with pytest.raises(BadRequestError, match="kind must be one of"):
        save_segments(object(), "image1", "later", bytes(4), _params())


# --------------------------------------------------------------------------------------------
# Local fonts and the panel's files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from monailabel.endpoints import ohif as stock_ohif

    from lib import ohif_static

    app = FastAPI()
    app.include_router(stock_ohif.router)
    ohif_static.install(app)
    return TestClient(app)


def test_viewer_page_and_styles_ask_no_font_service(viewer):
    from lib.ohif_static import ohif_dir

    root = ohif_dir()
    assert b"fonts.googleapis.com" in (root / "index.html").read_bytes()  # what is being fixed
    for path in ("/ohif/", "/ohif/index.html", "/ohif/afloc"):
        page = viewer.get(path).text
        assert "googleapis" not in page and "gstatic" not in page
        assert page.count('href="/ohif/_afloc/fonts.css"') == 1
    css_files = [p.name for p in root.glob("*.css")]
    assert "app.bundle.css" in css_files
    for name in css_files:
        assert "fonts.googleapis.com" not in viewer.get(f"/ohif/{name}").text


def test_fonts_css_declares_the_local_inter_files(tmp_path):
    from lib.ohif_static import font_files, fonts_css

    for name in ("Inter-Regular.otf", "Inter-Bold.otf", "Inter-Italic.otf"):
        (tmp_path / name).write_bytes(b"font")
    files = font_files(tmp_path)
    assert {w: p.name for w, p in files.items()} == {400: "Inter-Regular.otf", 700: "Inter-Bold.otf"}
    css = fonts_css(files).decode()
    assert "url('/ohif/_afloc/fonts/Inter-Regular.otf') format('opentype')" in css and "font-weight: 700" in css
    assert "@font-face" not in fonts_css({}).decode()


def test_panel_files_are_served_and_nothing_else(viewer):
    from lib.ohif_static import font_files

    css = viewer.get("/ohif/_afloc/afloc_panel.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and ".afloc-overlay" in css.text
    fonts = viewer.get("/ohif/_afloc/fonts.css")
    assert fonts.status_code == 200 and fonts.headers["content-type"].startswith("text/css")
    files = font_files()
    if files:  # fonts-inter installed (scripts/install_system_deps.sh)
        name = files[400].name
        reply = viewer.get(f"/ohif/_afloc/fonts/{name}")
        assert reply.status_code == 200 and reply.content == files[400].read_bytes()
    for bad in ("afloc_panel.js", "fonts/passwd", "fonts/Inter-Regular.otf.x", "nothing.css"):
        assert viewer.get(f"/ohif/_afloc/{bad}").status_code == 404, bad
    # Paths the HTTP client would normalise away, checked on the resolver itself.
    from lib.ohif_static import _asset_file

    for bad in ("../ohif_static.py", "fonts/../afloc_panel.css", "/etc/passwd", "a\\b.css"):
        assert _asset_file(bad) is None, bad


def test_app_config_carries_mode_and_panel(viewer):
    text = viewer.get("/ohif/app-config.js").text
    assert text.index("afloc-label-xray") < text.index("window.__aflocPanel")
    marks = [f"// Added by AFLoc Label (apps/afloc_label/lib/{name})" for name in
             ("ohif_afloc_mode.js", "ohif/afloc_study_list.js", "ohif/afloc_panel.js")]
    assert text.index(marks[0]) < text.index(marks[1]) < text.index(marks[2])
    assert "'afloc-label.panelModule.afloc'" in text


# --------------------------------------------------------------------------------------------
# GET /afloc/findings
# --------------------------------------------------------------------------------------------


def test_findings_of_a_report_in_a_real_datastore(tmp_path):
    """A local datastore (phantoms with reports + the CR without one): findings, negations left out."""
    from monailabel.config import settings

    from lib.datastore import AFLocDatastore, datastore_extensions
    from lib.errors import BadRequestError
    from lib.ohif_findings import findings_reply
    from tests.conftest import write_datastore

    folder = write_datastore(tmp_path / "store", phantoms=1)
    store = AFLocDatastore(str(folder), extensions=datastore_extensions(settings.MONAI_LABEL_DATASTORE_FILE_EXT))
    assert findings_reply(store, "RG1_UNCI") == {"image": "RG1_UNCI", "report": None, "report_source": findings_reply(store, "RG1_UNCI")["report_source"], "findings": []}
    store.update_image_info("RG1_UNCI", {"report": "FINDINGS: Moderate right pleural effusion. No pneumothorax. Possible left lower lobe consolidation."})
    reply = findings_reply(store, "RG1_UNCI")
    assert [(f["prompt"], f["certainty"]) for f in reply["findings"]] == [
        ("right pleural effusion", "positive"),
        ("left lower zone opacity", "uncertain"),
    ]
    with pytest.raises(BadRequestError):
        findings_reply(store, "../etc/passwd")


@needs_node
def test_panel_error_messages_name_the_problem():
    """What the panel shows for the server's error replies, and for a server that is not there."""
    got = _node(
        "(async () => {"
        "const reply = (status, body) => new Response(JSON.stringify(body), {status, headers: {'content-type': 'application/json'}});"
        "const out = {};"
        "out.model = await panel.replyError(reply(503, {detail: 'no AFLoc checkpoint is served yet: run scripts/build_demo.py', error: 'ModelUnavailableError'}), 'localizing');"
        "out.prompt = await panel.replyError(reply(400, {detail: 'prompt is empty', error: 'BadRequestError'}), 'localizing');"
        "out.server = await panel.replyError(new Response('boom', {status: 500}), 'localizing');"
        "out.signIn = await panel.replyError(reply(401, {detail: 'Not authenticated'}), 'localizing', false);"
        "out.rejected = await panel.replyError(reply(401, {detail: 'invalid token: Signature has expired'}), 'localizing', true);"
        "try { await panel.request('http://127.0.0.1:9/infer/afloc', {method: 'POST'}, 'localizing'); } catch (e) { out.down = e.message; }"
        "console.log(JSON.stringify(out)); })();"
    )
    assert got["model"] == "The AFLoc model is not available: no AFLoc checkpoint is served yet: run scripts/build_demo.py"
    assert got["prompt"] == "The server refused (localizing): prompt is empty"
    assert got["server"].startswith("Localizing failed on the server (HTTP 500)")
    assert got["signIn"] == (
        'The AFLoc server asks you to sign in (localizing): enter your user name and password '
        '(or paste an access token) under "Server sign-in".'
    )
    assert got["rejected"] == (
        "The AFLoc server rejected your sign-in token (localizing): invalid token: Signature has expired. "
        'Sign in again under "Server sign-in".'
    )
    assert got["down"].startswith("Cannot reach the AFLoc server (localizing): is it running?")


def test_accepted_segments_keep_non_ascii_prompts(tmp_path):
    """Accept from the panel with French and Japanese prompts: the SEG's segment labels read back exactly."""
    import highdicom as hd

    from afloc_models.imaging import read_image
    from lib.geometry import geometry_for
    from lib.ohif_segments import parse_save_params, write_segmentation
    from tests.conftest import rg1_unci_path

    source = rg1_unci_path()
    image = read_image(source)
    geometry = geometry_for(source, image.shape, image.spacing)
    names = ["épanchement pleural droit", "右側胸水"]
    request = parse_save_params(_params(segments=[{"value": i + 1, "name": n} for i, n in enumerate(names)]))
    label = np.zeros(geometry.shape, dtype=np.uint8)
    label[1200:1700, 1000:1500] = 1
    label[600:1100, 700:1300] = 2
    seg = hd.seg.segread(str(write_segmentation(tmp_path / "seg.dcm", label, request, geometry, source, "final")))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == names
    assert "ISO_IR 192" in seg.SpecificCharacterSet


# --------------------------------------------------------------------------------------------
# The study list: a double-click opens a 2D study in the AFLoc mode
# --------------------------------------------------------------------------------------------

STUDY_LIST_JS = APP_DIR / "lib" / "ohif" / "afloc_study_list.js"
MODE_JS = APP_DIR / "lib" / "ohif_afloc_mode.js"

# Minimal stand-ins for what the script touches: rows with data-cy and closest(), the history,
# the viewer's data source (QIDO-RS result with `modalities`) and the loaded AFLoc mode.
_STUDY_LIST_PRELUDE = """
global.window = {location: {origin: 'http://x', pathname: '/ohif/', search: ''}};
const listeners = {}; const pushed = []; const events = [];
global.document = {cookie: '', addEventListener: (n, f, c) => { listeners[n] = {f, c}; }, querySelector: () => null};
window.history = {state: {usr: null, key: 'a', idx: 3}, pushState(s, t, url) { this.state = s; pushed.push(url); }};
window.dispatchEvent = (e) => events.push(e.type);
global.PopStateEvent = class { constructor(type, init) { this.type = type; this.state = init.state; } };
global.setTimeout = () => 0;
function node(cy, parent) {
  const n = {cy, parentElement: parent || null, getAttribute: (k) => (k === 'data-cy' ? cy : null)};
  n.closest = (sel) => { for (let x = n; x; x = x.parentElement) if (x.cy !== undefined && sel === 'tr[data-cy]') return x; return null; };
  return n;
}
function plain(parent) { const n = node(undefined, parent); return n; }
require(process.argv[1]); require(process.argv[2]);
const mode = window.config.modes[0].modeFactory();
const studies = {'1.2.3': 'CR\\\\SEG', '1.2.4': 'CT', '1.2.5': 'DX/SR'};
const ext = window.config.extensions.find((e) => e.id === 'afloc-label-study-list');
ext.preRegistration({appConfig: {routerBasename: '/ohif/', loadedModes: [mode]}, extensionManager: {getActiveDataSource: () => [{query: {studies: {search: async ({studyInstanceUid}) => [{studyInstanceUid, modalities: studies[studyInstanceUid]}]}}}]}});
const list = window.__aflocStudyList;
"""


def _study_list(script: str) -> dict:
    out = subprocess.run(
        ["node", "-e", _STUDY_LIST_PRELUDE + script, str(MODE_JS), str(STUDY_LIST_JS)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_node
def test_study_row_uid_only_for_a_studys_summary_row():
    got = _study_list(
        "const outer = node('studyRow-1.2.3'); const td = plain(outer); const summary = node('1.2.3', td);"
        "const cell = plain(summary); const expanded = plain(td); const series = node('series-x', expanded);"
        "console.log(JSON.stringify({cell: list.studyRowUid(cell), summary: list.studyRowUid(summary),"
        " outer: list.studyRowUid(outer), expanded: list.studyRowUid(expanded), series: list.studyRowUid(series),"
        " mismatch: list.studyRowUid(node('1.2.4', plain(node('studyRow-1.2.3')))), none: list.studyRowUid(null),"
        " capture: listeners.dblclick && listeners.dblclick.c === true}));"
    )
    assert got == {"cell": "1.2.3", "summary": "1.2.3", "outer": None, "expanded": None, "series": None,
                   "mismatch": None, "none": None, "capture": True}


@needs_node
def test_double_click_opens_2d_studies_in_the_afloc_mode_only():
    got = _study_list(
        "(async () => {"
        "const cr = await list.open('1.2.3'); const crOpen = list.lastOpen;"
        "const ct = await list.open('1.2.4'); const ctOpen = list.lastOpen;"
        "const dx = await list.open('1.2.5');"
        "const summary = node('1.2.5', plain(node('studyRow-1.2.5')));"
        "listeners.dblclick.f({target: plain(summary)}); await new Promise((r) => setImmediate(r));"
        "console.log(JSON.stringify({cr, crOpen, ct, ctOpen, dx, pushed, events, idx: window.history.state.idx})); })();"
    )
    assert got["cr"] == "/ohif/afloc?StudyInstanceUIDs=1.2.3"
    assert got["crOpen"]["valid"] is True and got["crOpen"]["modalities"] == "CR\\SEG"
    assert got["ct"] is None and got["ctOpen"] == {"uid": "1.2.4", "modalities": "CT", "valid": False}
    assert got["dx"] == "/ohif/afloc?StudyInstanceUIDs=1.2.5"
    # The CT study pushed nothing; the double-click on the DX row opened it like open() did.
    assert got["pushed"] == [got["cr"], got["dx"], got["dx"]]
    assert got["events"] == ["popstate"] * 3 and got["idx"] == 6
