"""The 3D Slicer module's Slicer-free library (AFLocLib) against a real AFLoc Label server.

Slicer itself cannot run here, so the tests cover what the module's buttons run (AFLocLib), with
``.seg.nrrd`` results checked through ``slicerio`` (an independent reader), and check that the
Slicer-side file stays a thin layer over it. Servers come from ``tests/conftest.py``. The module
file itself runs in ``tests/test_slicer_module.py``, inside a stand-in of Slicer's Python API.
"""

from __future__ import annotations

import ast
import http.server
import json
import py_compile
import re
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import slicerio

REPO_ROOT = Path(__file__).resolve().parents[1]
EXTENSION_DIR = REPO_ROOT / "slicer_extension"
MODULE_DIR = EXTENSION_DIR / "AFLoc"
sys.path.insert(0, str(MODULE_DIR))

from AFLocLib import (  # noqa: E402
    QUICK_PICKS,
    AFLocClient,
    CancelToken,
    ConsentRequiredError,
    NotAFLocServerError,
    OperationCancelledError,
    PromptHistory,
    PromptInputError,
    ServerError,
    ServerUnreachableError,
    add_quick_pick,
    build_draft,
    combined_labels,
    read_segmentation,
    split_prompts,
    terminology_entry,
    write_segmentation,
)
from AFLocLib import multipart, workflow  # noqa: E402
from AFLocLib.nrrd_io import read_nrrd, write_nrrd  # noqa: E402
from AFLocLib.tasks import BackgroundTask  # noqa: E402
from AFLocLib.terminology import terminology_context  # noqa: E402
from AFLocLib.volume import from_slicer_order, ras_to_lps, read_volume, to_slicer_order  # noqa: E402

PROMPTS = "right pleural effusion; cardiomegaly"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def export_like_slicer(folder: Path, seed: int = 7) -> workflow.PreparedImage:
    """A phantom radiograph exported the way the module exports a Slicer volume (NIfTI).

    Slicer holds a 2D image as ``[K, J, I] = [1, H, W]``; the file stores ``[I, J, K]``. The image
    is not square (H 256, W 200) so that a transposed result cannot pass.
    """
    from afloc_training.phantoms import generate_phantom

    pixels = generate_phantom(np.random.default_rng(seed), size=256).image[:, 28:228]  # [H, W]
    slicer_array = pixels[np.newaxis].astype(np.int16)  # [K, J, I]
    ijk_to_ras = np.diag([-0.7, -0.7, 1.0, 1.0])
    ijk_to_ras[:3, 3] = [90.0, 120.0, 0.0]
    voxels = from_slicer_order(slicer_array)
    path = folder / f"phantom{seed}.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(voxels), ijk_to_ras), str(path))
    ijk_to_lps = ras_to_lps(ijk_to_ras)
    image_id = workflow.volume_image_id(f"phantom {seed}", slicer_array, ijk_to_lps)
    return workflow.PreparedImage(path=path, image_id=image_id, ijk_to_lps=ijk_to_lps, shape=voxels.shape)


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def serve_in_thread(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.HTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client(afloc_server_url) -> AFLocClient:
    return AFLocClient(afloc_server_url, timeout=30)


@pytest.fixture(scope="module")
def localized(client, tmp_path_factory):
    """One full Run on the shared server: upload (with consent), infer two prompts, draft."""
    work = tmp_path_factory.mktemp("slicer-run")
    image = export_like_slicer(work)
    localization = workflow.localize(client, image, PROMPTS, consent=True, work_dir=work)
    return localization


# --------------------------------------------------------------------------------------------
# Prompts, terminology, files (no server)
# --------------------------------------------------------------------------------------------


def test_prompts_split_history_and_quick_picks():
    assert split_prompts(" right pleural effusion ;cardiomegaly;; Cardiomegaly\nedema ") == [
        "right pleural effusion",
        "cardiomegaly",
        "edema",
    ]
    with pytest.raises(PromptInputError, match="at least one finding"):
        split_prompts(" ; \n ")
    with pytest.raises(PromptInputError, match="at most 8"):
        split_prompts(";".join(f"finding {i}" for i in range(9)))

    assert add_quick_pick("pneumothorax", "cardiomegaly") == "pneumothorax; cardiomegaly"
    assert add_quick_pick("pneumothorax; Cardiomegaly", "cardiomegaly") == "pneumothorax; Cardiomegaly"
    assert {"pleural effusion", "pneumothorax", "cardiomegaly", "atelectasis"} <= set(QUICK_PICKS)

    history = PromptHistory(max_entries=2)
    for text in ("a", "b;c", "A", ";"):
        history.add(text)
    assert history.entries == ["A", "b; c"]  # repeats move up, blanks are ignored, oldest dropped
    assert PromptHistory.from_json(history.to_json()).entries == history.entries
    assert PromptHistory.from_json("not json").entries == []


def test_terminology_codes_and_context():
    fields = terminology_entry("Right pleural effusion").split("~")
    assert len(fields) == 7
    assert fields[2] == "SCT^60046008^Pleural effusion"
    region, modifier = terminology_entry("left lower lobe consolidation").split("~")[5:]
    assert (region, modifier) == ("SCT^39607008^Lung", "SCT^7771000^Left")
    assert "SCT^8186001^Cardiomegaly" in terminology_entry("cardiomegaly")
    assert "SCT^36118008^Pneumothorax" in terminology_entry("small apical pneumothorax")
    assert "SCT^786838002^Nodule of lung" in terminology_entry("lung nodule")
    # Free text keeps a valid entry: a generic clinical finding.
    assert terminology_entry("tube tip position").split("~")[2] == "SCT^404684003^Clinical finding"
    assert terminology_entry("pericardial effusion").split("~")[2] == "SCT^404684003^Clinical finding"
    # slicerio parses the entry string the way Slicer stores it.
    parsed = slicerio.segmentation.terminology_entry_from_string(terminology_entry("bilateral pulmonary edema"))
    assert parsed["type"] == ["SCT", "19242006", "Pulmonary edema"]
    assert parsed["anatomicRegionModifier"] == ["SCT", "51440002", "Right and left"]

    context = terminology_context()
    types = context["SegmentationCodes"]["Category"][0]["Type"]
    assert {t["CodeValue"] for t in types} >= {"60046008", "36118008", "8186001", "46621007", "95436008"}


def test_draft_seg_nrrd_reads_back_in_slicerio(tmp_path):
    """Overlapping masks -> layered ``.seg.nrrd`` with named, coded segments; slicerio agrees."""
    effusion = np.zeros((40, 30, 1), bool)
    effusion[5:25, 3:12] = True
    heart = np.zeros((40, 30, 1), bool)
    heart[15:35, 8:20] = True  # overlaps the effusion
    ijk_to_lps = np.diag([0.5, 0.4, 1.0, 1.0])
    ijk_to_lps[:3, 3] = [10.0, -5.0, 2.0]
    draft = build_draft(
        ["right pleural effusion", "cardiomegaly"], [effusion, heart], ijk_to_lps, existing_names=["Cardiomegaly"]
    )
    path = write_segmentation(tmp_path / "draft.seg.nrrd", draft)

    seg = slicerio.read_segmentation(str(path))
    assert slicerio.segment_names(seg) == ["right pleural effusion", "cardiomegaly (2)"]  # user's name kept free
    assert np.allclose(seg["ijkToLPS"], ijk_to_lps)
    for name, mask in (("right pleural effusion", effusion), ("cardiomegaly (2)", heart)):
        segment = slicerio.segment_from_name(seg, name)
        assert np.array_equal(slicerio.segment_mask(seg, segment), mask)
        assert segment["status"] == "inprogress"
    assert slicerio.segment_from_name(seg, "cardiomegaly (2)")["terminology"]["type"][1] == "8186001"

    # And our reader reads what slicerio writes (Slicer writes the same layout).
    again = tmp_path / "slicerio.seg.nrrd"
    slicerio.write_segmentation(str(again), seg)
    ours = read_segmentation(again)
    assert ours.names == ["right pleural effusion", "cardiomegaly (2)"]
    assert np.array_equal(ours.mask("cardiomegaly (2)"), heart)
    assert "60046008" in ours.segment("right pleural effusion").terminology


def test_nrrd_and_nifti_readers_match_reference_libraries(tmp_path):
    import nrrd

    heat = np.linspace(-1, 1, 6 * 5, dtype=np.float32).reshape(6, 5, 1)
    ijk_to_lps = np.array([[0.0, 0.3, 0, 1], [0.3, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    write_nrrd(tmp_path / "ours.nrrd", heat, ijk_to_lps, {"Note": "x"})
    data, header = nrrd.read(str(tmp_path / "ours.nrrd"))
    assert np.array_equal(data, heat) and np.allclose(header["space directions"], ijk_to_lps[:3, :3].T)
    assert header["Note"] == "x"

    nrrd.write(str(tmp_path / "ref.nrrd"), heat.astype(">f8"), {"encoding": "raw", "endian": "big"})
    assert np.array_equal(read_nrrd(tmp_path / "ref.nrrd").data, heat)

    ras = np.diag([-0.25, -0.25, 1.0, 1.0])
    nib.save(nib.Nifti1Image(heat[:, :, 0], ras), str(tmp_path / "h.nii"))
    volume = read_volume(tmp_path / "h.nii")
    assert volume.data.shape == (6, 5, 1) and np.array_equal(volume.data, heat)
    assert np.allclose(volume.ijk_to_lps, ras_to_lps(ras))

    truncated = tmp_path / "cut.nrrd"
    truncated.write_bytes((tmp_path / "ours.nrrd").read_bytes()[:-10])
    with pytest.raises(Exception, match="corrupt|truncated"):
        read_nrrd(truncated)
    assert np.array_equal(from_slicer_order(to_slicer_order(heat)), heat)


def test_multipart_keeps_binary_parts_exact():
    payload = bytes(range(256)) + b"\r\n--not-a-boundary\r\n\r\n" + bytes(range(255, -1, -1))
    body, content_type = multipart.encode(
        {"params": json.dumps({"prompt": "é"})}, [multipart.FilePart("label", "a.seg.nrrd", payload)]
    )
    parts = multipart.decode(body, content_type)
    assert json.loads(parts["params"].text()) == {"prompt": "é"}
    assert parts["label"].data == payload and parts["label"].filename == "a.seg.nrrd"


def test_combined_labels_follow_the_highest_heat():
    a = np.array([[0.9, 0.5, -0.2]], np.float32)
    b = np.array([[0.4, 0.5, 0.8]], np.float32)
    assert combined_labels([a, b], 0.3).tolist() == [[1, 1, 2]]  # ties go to the first prompt
    assert combined_labels([a, b], 0.85).tolist() == [[1, 0, 0]]
    assert combined_labels([a], 0.5).tolist() == [[1, 1, 0]]  # ">=": the threshold itself is inside


# --------------------------------------------------------------------------------------------
# The Slicer side stays thin
# --------------------------------------------------------------------------------------------


def test_slicer_module_is_thin_and_complete(tmp_path):
    module = MODULE_DIR / "AFLoc.py"
    py_compile.compile(str(module), cfile=str(tmp_path / "AFLoc.pyc"), doraise=True)
    tree = ast.parse(module.read_text(encoding="utf-8"))

    classes = {
        node.name: [b.id for b in node.bases if isinstance(b, ast.Name)]
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }
    assert classes["AFLoc"] == ["ScriptedLoadableModule"]
    assert classes["AFLocWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["AFLocLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["AFLocTest"] == ["ScriptedLoadableModuleTest"]

    allowed = {"logging", "os", "shutil", "tempfile", "numpy", "qt", "slicer", "vtk", "ctk", "unittest", "AFLocLib"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"AFLoc.py imports {name}: logic belongs in AFLocLib"
    source = module.read_text(encoding="utf-8")
    for marker in ("/infer", "/datastore", "/train", "urlopen", "http.client", "requests.", "multipart"):
        assert marker not in source, f"AFLoc.py contains '{marker}': HTTP code belongs in AFLocLib"
    assert "import slicer" not in "\n".join(p.read_text() for p in (MODULE_DIR / "AFLocLib").glob("*.py"))

    # Every widget the code uses exists in the Designer file.
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "AFLoc.ui")
    declared = {w.get("name") for w in ui.iter("widget")} | {layout.get("name") for layout in ui.iter("layout")}
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used and used <= declared, f"missing in AFLoc.ui: {sorted(used - declared)}"

    # The module's CMakeLists installs every library file and the resources.
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    for path in (MODULE_DIR / "AFLocLib").glob("*.py"):
        assert f"AFLocLib/{path.name}" in cmake
    assert "slicerMacroBuildScriptedModule" in cmake and "Resources/UI/${MODULE_NAME}.ui" in cmake


def test_extension_metadata_and_icon():
    from PIL import Image

    cmake = (EXTENSION_DIR / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", cmake), key
    assert "add_subdirectory(AFLoc)" in cmake

    entry = json.loads((EXTENSION_DIR / "AFLoc.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_type", "scm_url", "tier"}
    assert entry["category"] in cmake and entry["scm_url"].startswith("https://")

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "AFLoc.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128) and icon.mode == "RGBA"


# --------------------------------------------------------------------------------------------
# Against the real server
# --------------------------------------------------------------------------------------------


def test_connection_check_ok_down_and_foreign(client):
    info = client.check_connection()
    assert info.name == "AFLoc Label" and info.model == "afloc"
    assert "prompt" in info.model_config and "afloc_train" in info.trainers

    with pytest.raises(ServerUnreachableError, match="connection refused"):
        AFLocClient(f"127.0.0.1:{closed_port()}", timeout=5).check_connection()
    with pytest.raises(ServerUnreachableError, match="unknown host"):
        AFLocClient("http://no-such-host.invalid:8000", timeout=5).check_connection()

    class NotMonaiLabel(_QuietHandler):
        def do_GET(self):
            body = b"<html>hello</html>" if self.path == "/info/" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    foreign = serve_in_thread(NotMonaiLabel)
    try:
        with pytest.raises(NotAFLocServerError, match="did not answer JSON"):
            AFLocClient(f"http://127.0.0.1:{foreign.server_address[1]}").check_connection()
    finally:
        foreign.shutdown()
    with pytest.raises(NotAFLocServerError, match="no 'nope' model"):
        AFLocClient(client.url, model="nope").check_connection()


def test_upload_needs_consent_and_happens_once(client, tmp_path):
    image = export_like_slicer(tmp_path, seed=11)
    assert not client.has_image(image.image_id)
    with pytest.raises(ConsentRequiredError, match="consent"):
        workflow.localize(client, image, "pneumothorax", consent=False, work_dir=tmp_path)
    assert not client.has_image(image.image_id)  # nothing was sent

    image_id, uploaded = client.ensure_image(image.path, image.image_id, consent=True)
    assert (image_id, uploaded) == (image.image_id, True)
    assert client.ensure_image(image.path, image.image_id, consent=False) == (image.image_id, False)
    listing = client.datastore()
    assert image.image_id in listing["objects"]


def test_two_prompts_give_two_named_coded_segments(localized):
    assert localized.uploaded
    assert localized.prompts == ["right pleural effusion", "cardiomegaly"]
    assert [f.label_value for f in localized.result.findings] == [1, 2]
    assert all(f.probability is not None and 0 <= f.probability <= 1 for f in localized.result.findings)

    seg = slicerio.read_segmentation(str(localized.draft_path))
    assert slicerio.segment_names(seg) == ["right pleural effusion", "cardiomegaly"]
    codes = [s["terminology"]["type"][1] for s in seg["segments"]]
    assert codes == ["60046008", "8186001"]
    assert seg["voxels"].shape[-3:] == localized.image.shape == (200, 256, 1)
    assert np.allclose(seg["ijkToLPS"], localized.image.ijk_to_lps)
    for index, segment in enumerate(seg["segments"]):
        mask = slicerio.segment_mask(seg, segment)
        assert np.array_equal(mask, localized.heatmaps[index] >= localized.threshold)

    # The server's own label file carries the prompt names too (the stock-module path).
    server_label = slicerio.read_segmentation(str(localized.result.label_path))
    assert slicerio.segment_names(server_label) == ["right pleural effusion", "cardiomegaly"]


def test_local_rethreshold_equals_server_threshold(client, localized, tmp_path):
    server = read_volume(localized.result.label_path).data
    assert localized.threshold == pytest.approx(0.3)
    assert set(np.unique(server)) == {0, 1, 2}  # both findings present: the comparison means something
    assert np.array_equal(combined_labels(localized.heatmaps, localized.threshold), server)

    # Another threshold: the server's label at 0.6 equals the local recomputation at 0.6.
    again = client.infer(localized.image.image_id, localized.prompts, threshold=0.6, dest_dir=tmp_path)
    assert again.threshold == pytest.approx(0.6)
    at_06 = read_volume(again.label_path).data
    assert 0 < np.count_nonzero(at_06) < np.count_nonzero(server)
    assert np.array_equal(combined_labels(localized.heatmaps, 0.6), at_06)

    redrafted = workflow.redraft(localized, 0.6)
    for index, name in enumerate(redrafted.segment_names):
        assert np.array_equal(redrafted.draft.mask(name), localized.heatmaps[index] >= 0.6)
    first = localized.segment_names[0]
    assert redrafted.draft.mask(first).sum() <= localized.draft.mask(first).sum()


def test_save_final_and_draft(client, localized, tmp_path):
    image_id = localized.image.image_id
    final = workflow.save_review(client, image_id, localized.draft_path, final=True, localization=localized)
    assert final["image"] == image_id
    draft = workflow.save_review(client, image_id, localized.draft_path, final=False, localization=localized)
    assert draft["image"] == image_id

    labels = client.datastore()["objects"][image_id]["labels"]
    assert {"final", "afloc_draft"} <= set(labels)
    assert [s["name"] for s in labels["final"]["info"]["segments"]] == ["right pleural effusion", "cardiomegaly"]
    assert labels["final"]["info"]["prompts"] == localized.prompts

    saved = client.download_label(image_id, "final", tmp_path / "final.seg.nrrd")
    seg = slicerio.read_segmentation(str(saved))
    assert slicerio.segment_names(seg) == ["right pleural effusion", "cardiomegaly"]
    assert seg["segments"][0]["terminology"]["type"][1] == "60046008"


def test_server_errors_name_the_problem(client):
    with pytest.raises(ServerError) as info:
        client.infer("no-such-image", "pneumothorax")
    assert info.value.status == 404 and "no-such-image" in info.value.detail
    with pytest.raises(PromptInputError):
        client.infer("no-such-image", " ; ")


def test_cancel_interrupts_a_waiting_request(client, localized):
    class NeverAnswers(_QuietHandler):
        def do_GET(self):
            time.sleep(30)

    silent = serve_in_thread(NeverAnswers)
    try:
        task = BackgroundTask(
            lambda context: AFLocClient(f"127.0.0.1:{silent.server_address[1]}").check_connection(cancel=context.cancel)
        ).start()
        time.sleep(0.3)
        started = time.monotonic()
        task.cancel()
        assert task.wait(5)
        assert time.monotonic() - started < 2
        assert task.cancelled
        with pytest.raises(OperationCancelledError):
            task.outcome()

        with pytest.raises(ServerUnreachableError, match="no answer within"):
            AFLocClient(f"127.0.0.1:{silent.server_address[1]}", timeout=0.5).check_connection()
    finally:
        silent.shutdown()

    # A real inference cancelled while its reply streams in (deterministic: cancel on the first
    # bytes, whatever the server's speed); the server keeps answering afterwards.
    token = CancelToken()
    with pytest.raises(OperationCancelledError):
        client.infer(
            localized.image.image_id, "pneumothorax; atelectasis", cancel=token,
            progress=lambda received, total: token.cancel(),
        )
    assert client.check_connection().name == "AFLoc Label"


def test_training_start_status_and_stop(client):
    started = client.start_training({"max_steps": 500, "max_minutes": 5})
    assert started.status in ("SUBMITTED", "RUNNING")
    deadline = time.monotonic() + 30
    while client.training_status().status == "SUBMITTED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.training_status().status == "RUNNING"
    with pytest.raises(ServerError) as busy:
        client.start_training({"max_steps": 1})
    assert busy.value.status == 429  # one training at a time
    stopped = client.stop_training()
    assert stopped is not None and stopped.status == "STOPPED"
    assert client.training_status().status == "STOPPED" and client.training_status().finished


@pytest.mark.slow
def test_training_runs_to_completion_and_is_served(start_afloc_server, make_datastore, tmp_path):
    server = start_afloc_server(studies=make_datastore(tmp_path / "train-ds", phantoms=3, dicom=False))
    trainer = AFLocClient(server.url)
    assert trainer.training_status() is None
    before = trainer.check_connection().models["afloc"]["model_version"]

    seen = []
    finished = workflow.train(trainer, {"max_steps": 2, "max_minutes": 2}, poll_seconds=0.5, on_status=seen.append)
    assert finished.status == "DONE", finished.details[-5:]
    assert seen[0].running and seen[-1].finished
    assert trainer.check_connection().models["afloc"]["model_version"] != before
