"""The Slicer module file itself (``slicer_extension/AFLoc/AFLoc.py``) driven through a strict stand-in
of Slicer 5.8's Python API (``tests/slicer_standin``) against a real AFLoc Label server.

The real Widget and Logic run: buttons are clicked, the event loop is pumped, modal dialogs are
answered, network jobs run in the module's worker process (``AFLocLib.worker`` under a
``PythonSlicer`` launcher) and talk HTTP to ``monailabel start_server``. What the stand-in cannot
show (Slicer's GIL, rendering) is in docs/slicer.md with the manual check to run in Slicer.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import slicerio

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from slicer_standin import harness  # noqa: E402

PROMPTS = "right pleural effusion; cardiomegaly"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    harness.install(tmp_path_factory.mktemp("slicer-bin"))
    import qt
    import slicer
    import vtk

    return slicer, qt, vtk


@pytest.fixture
def module(standin):
    """``(AFLoc module namespace, widget)`` freshly loaded; the widget is unloaded afterwards."""
    harness.reset()
    namespace, widget = harness.load_module()
    yield namespace, widget
    workdir = widget.logic._workDir
    harness.unload(widget)
    if workdir:
        assert not os.path.exists(workdir), "cleanup() must delete the module's temporary folder"


def phantom_pixels(seed: int, rows: int = 256, cols: int = 200) -> np.ndarray:
    from afloc_training.phantoms import generate_phantom

    image = generate_phantom(np.random.default_rng(seed), size=max(rows, cols, 64)).image
    return image[:rows, :cols]


def add_volume(slicer, pixels: np.ndarray, name: str, spacing: float = 0.7, vector: bool = False):
    ijk_to_ras = np.diag([-spacing, -spacing, 1.0, 1.0])
    ijk_to_ras[:3, 3] = [90.0, 120.0, 0.0]
    array = pixels[np.newaxis]
    return slicer.util.addVolumeFromArray(
        array, ijk_to_ras, name=name, nodeClassName="vtkMRMLVectorVolumeNode" if vector else None
    )


def wait_idle(widget, timeout: float = 180.0) -> None:
    harness.pump_until(lambda: not widget._tasks, timeout, "the module's jobs to finish")


def run_prompts(widget, prompts: str, timeout: float = 180.0) -> str:
    widget.ui.promptCombo.setEditText(prompts)
    widget.ui.runButton.click()
    wait_idle(widget, timeout)
    return widget.ui.statusLabel.text


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def segment_mask(slicer, segmentation_node, name: str, volume) -> np.ndarray:
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume)[0].T  # [I, J]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingProxy:
    """A reverse proxy in front of the real server that records every request line it forwards."""

    def __init__(self, upstream: str):
        target = urllib.parse.urlsplit(upstream)
        self.requests: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                proxy.requests.append(f"{self.command} {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


# --------------------------------------------------------------------------------------------
# The stand-in is strict
# --------------------------------------------------------------------------------------------


def test_standin_rejects_what_slicer_does_not_have(standin, tmp_path):
    slicer, qt, vtk = standin
    harness.reset()
    segmentation = slicer.vtkSegmentation()
    with pytest.raises(AttributeError):
        segmentation.ChangeSegmentId("a", "b")  # in no Slicer version (issue item 1)
    segment = slicer.vtkSegment()
    segment.SetTag("TerminologyEntry", "x~y")
    with pytest.raises(TypeError):
        segment.GetTag("TerminologyEntry")  # bool GetTag(std::string, std::string&) (issue item 2)
    value = vtk.mutable("")
    assert segment.GetTag("TerminologyEntry", value) and str(value) == "x~y"
    with pytest.raises(AttributeError):
        segment.foo = 1  # __slots__: no ad-hoc attributes on wrapped VTK objects
    with pytest.raises(AttributeError):
        qt.QPushButton("x").textt = "typo"  # not a Qt property
    with pytest.raises(ValueError):
        qt.QPushButton("x").connect("clicked(int)", print)  # not a signal of QPushButton
    with pytest.raises(TypeError):
        slicer.util.arrayFromSegmentBinaryLabelmap()  # exact positional signature

    # Clashing ids: GenerateUniqueSegmentID returns a free id; AddSegment under a taken id silently
    # replaces that segment (vtkSegmentation.cxx), so the module must never pass a taken id.
    first = slicer.vtkSegment()
    first.SetName("mine")
    assert segmentation.AddSegment(first, "cardiomegaly")
    assert segmentation.GenerateUniqueSegmentID("cardiomegaly") == "cardiomegaly_1"
    assert segmentation.AddSegment(slicer.vtkSegment(), "cardiomegaly")
    assert segmentation.GetSegment("cardiomegaly").GetName() == "" and segmentation.GetNumberOfSegments() == 1

    # exportNode shares its default `properties` dict between calls, as util.py l.1184 does:
    # after a volume export without `{}`, a segmentation export without `{}` inherits "NIfTI".
    volume = add_volume(slicer, phantom_pixels(1, 40, 30), "v")
    seg_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    seg_node.GetSegmentation().AddEmptySegment("s", "s")
    default = slicer.util.exportNode.__defaults__[0]
    default.clear()
    try:
        assert slicer.util.exportNode(volume, str(tmp_path / "v.nii.gz"))
        assert not slicer.util.exportNode(seg_node, str(tmp_path / "s.seg.nrrd"))
    finally:
        default.clear()
    assert slicer.util.exportNode(seg_node, str(tmp_path / "s.seg.nrrd"), {})
    assert slicerio.segment_names(slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"))) == ["s"]


def test_terminology_ships_as_a_resource_loaded_at_startup(module, standin):
    slicer, _, _ = standin
    from AFLocLib.terminology import CONTEXT_NAME, terminology_context

    resource = harness.MODULE_DIR / "Resources" / "Terminology" / "AFLocFindings.term.json"
    assert json.loads(resource.read_text(encoding="utf-8")) == terminology_context()
    loaded = slicer.modules.terminologies.logic().loaded
    assert loaded == {CONTEXT_NAME: str(resource)}  # the shipped file itself, no temporary copy
    cmake = (harness.MODULE_DIR / "CMakeLists.txt").read_text()
    assert "Resources/Terminology/AFLocFindings.term.json" in cmake


# --------------------------------------------------------------------------------------------
# The module against a real server
# --------------------------------------------------------------------------------------------


def test_module_connect_consent_run_threshold_switch_accept_undo_close(module, standin, afloc_server_url, tmp_path):
    slicer, qt, vtk = standin
    namespace, widget = module
    ui = widget.ui
    ui.serverUrlEdit.text = afloc_server_url
    ui.connectButton.click()
    wait_idle(widget, 60)
    assert ui.serverStatusLabel.text.startswith("Connected: AFLoc Label"), ui.serverStatusLabel.text
    # The panel shows what the served checkpoint says it was trained on (conftest's test model).
    assert "\nModel trained on: test: untrained, random weights" in ui.serverStatusLabel.text, ui.serverStatusLabel.text

    image_a = add_volume(slicer, phantom_pixels(21), "chest A")
    image_b = add_volume(slicer, phantom_pixels(22, 180, 220), "chest B", spacing=0.5)
    assert ui.inputVolumeSelector.currentNode() is image_a
    # The user's own segmentation, with a segment whose *id* is the one the draft will want.
    user_seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    user_seg.SetReferenceImageGeometryParameterFromVolumeNode(image_a)
    user_seg.GetSegmentation().AddEmptySegment("cardiomegaly", "heart (mine)")
    ui.segmentationSelector.setCurrentNode(user_seg)

    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=True)  # consent, "don't ask again"
    status = run_prompts(widget, PROMPTS)
    assert status.startswith("Draft ready"), status
    assert "(image uploaded)" in status
    # The server's reading of this model, as the OHIF panel words it.
    assert ("Maps: a prompt that names a side is the mean of the image and its mirror. "
            "Heat follows the image's edges (guided filter).") in status
    consent = harness.shown_dialogs()[0]
    assert afloc_server_url in consent["text"] and "chest A" in consent["text"]
    assert segment_names(user_seg) == ["heart (mine)", "right pleural effusion", "cardiomegaly"]
    ids = user_seg.GetSegmentation().GetSegmentIDs()
    assert len(set(ids)) == 3 and ids[0] == "cardiomegaly"  # the draft's clashing id was made unique
    effusion = user_seg.GetSegmentation().GetSegment(ids[1])
    entry = vtk.mutable("")
    assert effusion.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
    assert "SCT^60046008^Pleural effusion" in str(entry)
    localization = widget.draft["localization"]
    assert [h.shape for h in localization.heatmaps] == [(200, 256, 1)] * 2
    for index, name in enumerate(localization.segment_names):
        assert np.array_equal(segment_mask(slicer, user_seg, name, image_a), localization.heatmaps[index][:, :, 0] >= 0.3)
    composite = slicer.mrmlScene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    heatmap = slicer.mrmlScene.GetFirstNodeByName(namespace.HEATMAP_NODE_NAME)
    assert composite.GetBackgroundVolumeID() == image_a.GetID()
    assert composite.GetForegroundVolumeID() == heatmap.GetID()
    workdir = Path(widget.logic.workDir())
    assert not list(workdir.glob("input-*")), "the exported image copy must be deleted after the run"

    # Second prompt run, same image: no dialog (consent remembered), one name clash -> keep both.
    harness.answer_dialog(qt.QMessageBox.No)  # "Replace the existing 'cardiomegaly'?" -> No
    status = run_prompts(widget, "pneumothorax; cardiomegaly")
    assert status.startswith("Draft ready") and "uploaded" not in status, status
    assert segment_names(user_seg)[3:] == ["pneumothorax", "cardiomegaly (2)"]
    second = widget.draft["localization"]
    assert [p.name for p in workdir.glob("run-*")] == [second.draft_path.parent.name]  # the first run's files went

    # Threshold: recomputed locally into the draft's segments.
    ui.thresholdSlider.value = 0.5
    harness.pump(0.4)
    for index, name in enumerate(second.segment_names):
        assert np.array_equal(segment_mask(slicer, user_seg, name, image_a), second.heatmaps[index][:, :, 0] >= 0.5)

    # An edit by the user (as Segment Editor would make): re-thresholding asks first; "No" keeps it.
    edited_id = user_seg.GetSegmentation().GetSegmentIdBySegmentName("pneumothorax")
    edit = np.zeros((1, 256, 200), np.uint8)
    edit[0, 10:20, 10:20] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edit, user_seg, edited_id, image_a)
    harness.answer_dialog(qt.QMessageBox.No)
    ui.thresholdSlider.value = 0.55
    harness.pump(0.4)
    assert "You edited 'pneumothorax'" in harness.shown_dialogs()[-1]["text"]
    assert segment_mask(slicer, user_seg, "pneumothorax", image_a).sum() == 100

    # Switch the image selector: the draft stays on chest A (masks, heatmap, accept).
    ui.inputVolumeSelector.setCurrentNode(image_b)
    assert "belongs to 'chest A'" in ui.statusLabel.text
    harness.answer_dialog(qt.QMessageBox.Yes)  # "You edited 'pneumothorax'... Continue?"
    ui.thresholdSlider.value = 0.6
    harness.pump(0.4)
    for index, name in enumerate(second.segment_names):
        assert np.array_equal(segment_mask(slicer, user_seg, name, image_a), second.heatmaps[index][:, :, 0] >= 0.6)
    assert composite.GetBackgroundVolumeID() == image_a.GetID()

    ui.acceptButton.click()
    wait_idle(widget, 60)
    assert ui.statusLabel.text.startswith("Saved on the server as the final label"), ui.statusLabel.text
    from AFLocLib import AFLocClient

    client = AFLocClient(afloc_server_url)
    image_id = second.image.image_id
    final = client.datastore()["objects"][image_id]["labels"]["final"]
    assert final["info"]["prompts"] == ["pneumothorax", "cardiomegaly"] and final["info"]["threshold"] == pytest.approx(0.6)
    saved = slicerio.read_segmentation(str(client.download_label(image_id, "final", tmp_path / "final.seg.nrrd")))
    assert slicerio.segment_names(saved) == segment_names(user_seg)
    pneumothorax = slicerio.segment_from_name(saved, "pneumothorax")
    assert pneumothorax["status"] == "completed"
    assert np.array_equal(slicerio.segment_mask(saved, pneumothorax)[:, :, 0], second.heatmaps[0][:, :, 0] >= 0.6)
    assert not list(workdir.glob("save-*")), "the exported segmentation must be deleted after saving"

    ui.undoButton.click()
    assert segment_names(user_seg) == ["heart (mine)", "right pleural effusion", "cardiomegaly"]
    assert widget.draft is None and not ui.acceptButton.enabled
    assert not list(workdir.glob("run-*")) and not list(workdir.glob("job-*"))

    # Settings: "don't ask again" is listed and can be undone.
    assert afloc_server_url in ui.consentStatusLabel.text
    ui.forgetConsentButton.click()
    assert not widget.logic.hasConsent(afloc_server_url)

    # Close the scene while a run is in flight: the job is stopped, the draft and its files go.
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    ui.segmentationSelector.setCurrentNode(user_seg)
    widget.ui.promptCombo.setEditText("atelectasis")
    ui.runButton.click()
    assert widget._busy("run")
    slicer.mrmlScene.Clear(0)
    assert not widget._tasks and widget.draft is None
    assert ui.statusLabel.text == "Scene closed: the draft was discarded."
    assert not list(workdir.glob("run-*"))
    harness.pump(0.3)
    assert ui.statusLabel.text == "Scene closed: the draft was discarded."


def test_nothing_is_sent_before_consent(module, standin, afloc_server_url):
    slicer, qt, _ = standin
    _, widget = module
    proxy = RecordingProxy(afloc_server_url)
    try:
        widget.ui.serverUrlEdit.text = proxy.url
        add_volume(slicer, phantom_pixels(31), "secret patient name")
        harness.answer_dialog(qt.QMessageBox.No)
        status = run_prompts(widget, "pneumothorax")
        assert status == "Not run: nothing was sent, the image stays on this computer."
        assert proxy.requests == []  # not even HEAD /datastore/image?image=<name>-<digest>

        harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
        status = run_prompts(widget, "pneumothorax")
        assert status.startswith("Draft ready"), status
        assert proxy.requests[0].startswith("HEAD /datastore/image?image=secret_patient_name-")
        assert any(r.startswith("PUT /datastore/image") for r in proxy.requests)
        # Not remembered: the next run asks again (and sends nothing when refused).
        count = len(proxy.requests)
        harness.answer_dialog(qt.QMessageBox.No)
        run_prompts(widget, "pneumothorax")
        assert len(proxy.requests) == count
    finally:
        proxy.close()


def test_server_down_shows_the_problem_not_done(module, standin):
    slicer, qt, _ = standin
    _, widget = module
    widget.ui.serverUrlEdit.text = f"http://127.0.0.1:{closed_port()}"
    add_volume(slicer, phantom_pixels(41), "chest")
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    status = run_prompts(widget, "pneumothorax")
    assert "cannot reach the AFLoc Label server" in status and "connection refused" in status, status
    assert "Done" not in status and "Draft ready" not in status
    assert any("cannot reach" in d["text"] for d in harness.shown_dialogs())  # the error dialog
    widget.ui.connectButton.click()
    wait_idle(widget, 30)
    assert "cannot reach" in widget.ui.serverStatusLabel.text


def test_a_slicer_error_after_the_reply_is_reported_and_rolled_back(module, standin, afloc_server_url, monkeypatch):
    """Issue item 4: RuntimeError from loadSegmentation (as Slicer raises on a bad file) is shown,
    the segmentation is left as it was, and the panel never says the draft is ready."""
    slicer, qt, _ = standin
    _, widget = module
    widget.ui.serverUrlEdit.text = afloc_server_url
    volume = add_volume(slicer, phantom_pixels(51), "chest")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.GetSegmentation().AddEmptySegment("kept", "kept")
    widget.ui.segmentationSelector.setCurrentNode(seg)

    def broken(filename, properties={}, returnNode=False):
        raise RuntimeError(f"Failed to load node from file: {filename}")

    monkeypatch.setattr(slicer.util, "loadSegmentation", broken)
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    status = run_prompts(widget, PROMPTS)
    assert "RuntimeError: Failed to load node from file" in status, status
    assert "Draft ready" not in status
    assert segment_names(seg) == ["kept"] and widget.draft is None
    assert volume.GetID() == widget.ui.inputVolumeSelector.currentNodeID()


def test_colour_image_as_vector_volume(module, standin, afloc_server_url, tmp_path):
    """An RGB PNG loaded as a vector volume runs as is and reaches the server in colour."""
    from PIL import Image

    slicer, qt, _ = standin
    _, widget = module
    gray = (phantom_pixels(61, 220, 180) * 255).astype(np.uint8)
    rgb = np.stack([gray, (gray * 0.6).astype(np.uint8), 255 - gray], axis=-1)  # a real colour image
    Image.fromarray(rgb, "RGB").save(tmp_path / "fundus.png")
    pixels = np.asarray(Image.open(tmp_path / "fundus.png"))  # [rows, columns, 3], as Slicer reads a PNG
    volume = add_volume(slicer, pixels, "fundus", spacing=1.0, vector=True)
    assert widget.ui.inputVolumeSelector.currentNode() is volume  # listed: no conversion needed

    widget.ui.serverUrlEdit.text = afloc_server_url
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    status = run_prompts(widget, "cardiomegaly")
    assert status.startswith("Draft ready"), status
    localization = widget.draft["localization"]
    assert localization.heatmaps[0].shape == (180, 220, 1)
    from AFLocLib import AFLocClient

    stored = AFLocClient(afloc_server_url).download_image(localization.image.image_id, tmp_path / "stored.png")
    with Image.open(stored) as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), rgb)
    seg = widget.ui.segmentationSelector.currentNode()
    mask = segment_mask(slicer, seg, "cardiomegaly", volume)
    assert np.array_equal(mask, localization.heatmaps[0][:, :, 0] >= localization.threshold)


def test_self_test_runs(module, standin, afloc_server_url, monkeypatch):
    """The module's own ScriptedLoadableModuleTest (what a user runs in Slicer) passes here too."""
    namespace, _ = module
    monkeypatch.setenv("AFLOC_SERVER_URL", afloc_server_url)
    namespace.AFLocTest().runTest()


# --------------------------------------------------------------------------------------------
# A server with MONAI Label's authentication enabled
# --------------------------------------------------------------------------------------------


class TokenIssuer:
    """A minimal OpenID Connect issuer with Keycloak's routes, which MONAI Label 0.8.5's auth calls:
    ``GET <realm>`` (its RSA public key), ``GET <realm>/.well-known/openid-configuration`` (the token
    endpoint) and the password grant there, answering RS256-signed JWTs with realm roles."""

    def __init__(self, users: dict[str, str]):
        import base64

        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.grants: list[tuple[str, bool]] = []
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/realms/afloc":
                    self._reply(200, {"realm": "afloc", "public_key": base64.b64encode(public).decode()})
                elif self.path == "/realms/afloc/.well-known/openid-configuration":
                    self._reply(200, {"issuer": issuer.realm, "token_endpoint": issuer.realm + "/protocol/openid-connect/token"})
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                user, password = form.get("username", [""])[0], form.get("password", [""])[0]
                ok = form.get("grant_type") == ["password"] and users.get(user) == password and user != ""
                issuer.grants.append((user, ok))
                if not ok:
                    self._reply(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                    return
                claims = {"preferred_username": user, "exp": int(time.time()) + 600, "iss": issuer.realm,
                          "realm_access": {"roles": ["monailabel-user", "monailabel-annotator"]}}
                token = jwt.encode(claims, key, algorithm="RS256")
                self._reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": 600})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/realms/afloc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def auth_server(start_afloc_server, make_datastore, tmp_path):
    """The app with MONAI Label's authentication on (``MONAI_LABEL_AUTH_ENABLE``, its config.py
    settings), tokens issued by a local :class:`TokenIssuer`."""
    issuer = TokenIssuer({"radiologist": "correct horse"})
    try:
        handle = start_afloc_server(
            studies=make_datastore(tmp_path / "datastore", phantoms=1, dicom=False),
            env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer.realm},
        )
        yield handle, issuer
        handle.stop()
    finally:
        issuer.close()


def test_auth_enabled_server_login_token_and_run(module, standin, auth_server):
    handle, issuer = auth_server
    slicer, qt, _ = standin
    _, widget = module
    ui = widget.ui
    ui.serverUrlEdit.text = handle.url

    ui.connectButton.click()  # no login yet: the panel says what to do
    wait_idle(widget, 60)
    assert "requires you to log in" in ui.serverStatusLabel.text and "Log in" in ui.serverStatusLabel.text

    ui.userNameEdit.text, ui.passwordEdit.text = "radiologist", "wrong"
    ui.loginButton.click()
    wait_idle(widget, 60)
    assert "refused the user name or password" in ui.serverStatusLabel.text, ui.serverStatusLabel.text
    assert ui.tokenEdit.text == "" and ui.passwordEdit.text == ""  # the password is never kept

    ui.passwordEdit.text = "correct horse"
    ui.loginButton.click()
    wait_idle(widget, 60)
    assert ui.serverStatusLabel.text.startswith("Logged in as radiologist"), ui.serverStatusLabel.text
    token = ui.tokenEdit.text
    assert token.count(".") == 2  # a JWT, held for this session only
    assert issuer.grants == [("radiologist", False), ("radiologist", True)]
    assert qt.QSettings().value("AFLoc/UserName") == "radiologist"
    assert all("correct horse" not in str(v) and token not in str(v) for v in qt.QSettings._store.values())

    ui.connectButton.click()  # the token goes with every request
    wait_idle(widget, 60)
    assert ui.serverStatusLabel.text.startswith("Connected: AFLoc Label"), ui.serverStatusLabel.text
    add_volume(slicer, phantom_pixels(81), "chest")
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    status = run_prompts(widget, "pneumothorax")
    assert status.startswith("Draft ready") and "(image uploaded)" in status, status
    ui.acceptButton.click()
    wait_idle(widget, 60)
    assert ui.statusLabel.text.startswith("Saved on the server as the final label"), ui.statusLabel.text

    ui.tokenEdit.text = token[:-4] + "AAAA"  # a token the server cannot verify
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    status = run_prompts(widget, "atelectasis")
    assert "your login has expired or was refused" in status, status


# --------------------------------------------------------------------------------------------
# Why a worker process: a thread needs the GIL that the UI thread holds
# --------------------------------------------------------------------------------------------


def test_worker_process_advances_while_the_ui_thread_holds_the_gil(standin, afloc_server_url, tmp_path):
    """Slicer's PythonQt holds the GIL while Qt's event loop idles (issue item 3). Model that here by
    keeping this thread in pure Python with a 60 s GIL switch interval: a worker *thread* cannot run,
    the module's worker *process* finishes regardless."""
    from AFLocLib.tasks import BackgroundTask, SubprocessTask, WorkerCommand, worker_script
    from AFLocLib import AFLocClient

    def hold_gil(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass

    previous = sys.getswitchinterval()
    def job(context):
        time.sleep(0.5)  # mid-job (the GIL released, as in a socket wait) when the UI thread goes busy
        return AFLocClient(afloc_server_url).check_connection(cancel=context.cancel)

    thread_task = BackgroundTask(job)
    process_task = SubprocessTask(
        WorkerCommand(sys.executable, worker_script()), "connect",
        {"server": {"url": afloc_server_url, "token": None}}, str(tmp_path / "job"),
    )
    sys.setswitchinterval(60.0)
    try:
        process_task.start()
        thread_task.start()
        hold_gil(8.0)
        thread_done, process_done = thread_task.done, process_task.done
    finally:
        sys.setswitchinterval(previous)
    assert process_done and process_task.outcome().name == "AFLoc Label"
    assert not thread_done  # starved: it only runs when the UI thread lets go of the GIL
    assert thread_task.wait(60) and thread_task.outcome().name == "AFLoc Label"


# --------------------------------------------------------------------------------------------
# The picture in the extension metadata: a stand-in rendering, captioned as such
# --------------------------------------------------------------------------------------------


def test_render_stand_in_figure(module, standin, afloc_server_url, tmp_path):
    """Renders the module's result (heatmap overlay and draft segments, from the real server) with
    matplotlib. ``AFLOC_SLICER_FIGURE=docs/images/slicer-afloc.png`` regenerates the picture the
    extension metadata shows (with ``AFLOC_TEST_CHECKPOINT`` pointing at a trained model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slicer, qt, _ = standin
    _, widget = module
    widget.ui.serverUrlEdit.text = afloc_server_url
    volume = add_volume(slicer, phantom_pixels(71, 256, 256), "phantom radiograph", spacing=1.0)
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    status = run_prompts(widget, PROMPTS)
    assert status.startswith("Draft ready"), status
    localization = widget.draft["localization"]
    segmentation = widget.ui.segmentationSelector.currentNode()
    heat = slicer.mrmlScene.GetFirstNodeByName("AFLoc heatmap")
    display = heat.GetDisplayNode()

    image = slicer.util.arrayFromVolume(volume)[0]
    heatmap = slicer.util.arrayFromVolume(heat)[0]
    shown = np.ma.masked_less(heatmap, display.GetLowerThreshold())
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.6), gridspec_kw={"width_ratios": [1.25, 1]})
    axes[0].imshow(image, cmap="gray")
    axes[0].imshow(shown, cmap="jet", alpha=widget.ui.opacitySlider.value, vmin=display.GetWindowLevelMin(),
                   vmax=display.GetWindowLevelMax())
    for name in localization.segment_names:
        segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        color = segmentation.GetSegmentation().GetSegment(segment_id).GetColor()
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)[0]
        if mask.any():
            axes[0].contour(mask, levels=[0.5], colors=[color], linewidths=1.5)
        axes[0].plot([], [], color=color, label=name)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title(f"heatmap: {widget.ui.heatmapPromptCombo.currentText}", fontsize=10)
    axes[0].axis("off")
    panel = [
        "AFLoc module panel (stand-in run)",
        "",
        f"Findings: {PROMPTS}",
        f"Threshold: {widget.ui.thresholdSlider.value:g}",
        "",
        *widget.ui.scoresLabel.text.split("<br>"),
        "",
        widget.ui.statusLabel.text,
    ]
    axes[1].text(0, 1, "\n".join(panel), va="top", family="monospace", fontsize=8, wrap=True)
    axes[1].axis("off")
    checkpoint = os.environ.get("AFLOC_TEST_CHECKPOINT")
    model = f"checkpoint {Path(checkpoint).name}" if checkpoint else "an UNTRAINED test checkpoint (random weights)"
    figure.text(0.5, 0.02, "Stand-in rendering (tests/slicer_standin, matplotlib), NOT a 3D Slicer screenshot: "
                "AFLoc.py ran against a real AFLoc Label server;\nsynthetic phantom image; heatmap and segments "
                f"as the server returned them for {model}.", ha="center", fontsize=8)
    out = Path(os.environ.get("AFLOC_SLICER_FIGURE") or tmp_path / "slicer-afloc.png")
    figure.savefig(out, dpi=100)
    plt.close(figure)
    assert out.stat().st_size > 10_000


def test_extension_hygiene():
    """Issue item 9: the license the Extensions Index requires, the metadata's picture, the docs."""
    license_text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and len(license_text) > 10_000  # the full text

    cmake = (REPO_ROOT / "slicer_extension" / "CMakeLists.txt").read_text()
    import re

    for url in re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', cmake).group(1).split():
        path = REPO_ROOT / url.split("/main/", 1)[1]
        assert path.is_file(), f"{path} named by EXTENSION_SCREENSHOTURLS does not exist"
    icon = re.search(r'EXTENSION_ICONURL "([^"]+)"', cmake).group(1)
    assert (REPO_ROOT / icon.split("/main/", 1)[1]).is_file()

    docs = (REPO_ROOT / "docs" / "slicer.md").read_text(encoding="utf-8")
    assert "it asks no consent" not in docs and "MONAILabel/showImageDataSendWarning" in docs
    assert "re-imports\n`AFLoc.py` only" in docs or "re-imports `AFLoc.py` only" in docs
    assert "## What the tests cannot prove" in docs


def test_training_start_and_stop_from_the_panel(module, standin, afloc_server_url):
    _, widget = module
    ui = widget.ui
    ui.serverUrlEdit.text = afloc_server_url
    ui.trainButton.click()
    assert widget._busy("train") and not ui.trainButton.enabled and ui.stopTrainButton.enabled
    harness.pump_until(lambda: "Training running" in ui.trainStatusLabel.text or not widget._busy("train"),
                       120, "training to run")
    assert "Training running" in ui.trainStatusLabel.text, ui.trainStatusLabel.text
    ui.stopTrainButton.click()
    wait_idle(widget, 60)
    assert ui.trainStatusLabel.text == "Training stopped.", ui.trainStatusLabel.text
    assert ui.trainButton.enabled and not ui.stopTrainButton.enabled
    from AFLocLib import AFLocClient

    assert AFLocClient(afloc_server_url).training_status().status == "STOPPED"


def test_cancel_stops_the_run(module, standin, afloc_server_url):
    slicer, qt, _ = standin
    _, widget = module
    widget.ui.serverUrlEdit.text = afloc_server_url
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    add_volume(slicer, phantom_pixels(91), "chest")
    widget.ui.segmentationSelector.setCurrentNode(seg)
    harness.answer_dialog(qt.QMessageBox.Yes, checkbox=False)
    widget.ui.promptCombo.setEditText("pneumothorax")
    widget.ui.runButton.click()
    assert widget.ui.cancelButton.enabled
    widget.ui.cancelButton.click()
    wait_idle(widget, 30)
    assert widget.ui.statusLabel.text == "run was cancelled"
    assert segment_names(seg) == [] and widget.draft is None and widget.ui.runButton.enabled
    assert not list(Path(widget.logic.workDir()).glob("input-*"))
    assert not any("cancelled" in d["text"] for d in harness.shown_dialogs())  # no error dialog for a cancel
