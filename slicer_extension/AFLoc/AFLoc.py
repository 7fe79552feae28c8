"""AFLoc: text-prompted localization of chest X-ray findings in 3D Slicer.

This file is the Slicer side only: widgets, scene nodes and dialogs. Everything that runs
without Slicer (the server client, prompts, terminology, ``.seg.nrrd`` conversion, local
re-thresholding, the Run / Accept / Training steps and the worker process that runs them) lives
in ``AFLocLib`` next to this file and is tested outside Slicer against a real server.

Network jobs run in a separate Python process (``AFLocLib.worker`` under Slicer's
``PythonSlicer``), polled from a ``QTimer``: Slicer's embedded Python keeps the GIL while Qt's
event loop idles, so a Python thread would only advance while this UI thread runs Python.
"""

import logging
import os
import shutil
import tempfile

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from AFLocLib import (
    QUICK_PICKS,
    AFLocClient,
    AFLocClientError,
    OperationCancelledError,
    PromptHistory,
    add_quick_pick,
)
from AFLocLib import workflow
from AFLocLib.image_files import color_pixels, write_png
from AFLocLib.tasks import SubprocessTask, WorkerCommand, worker_script
from AFLocLib.volume import from_slicer_order, lps_to_ras, ras_to_lps, to_slicer_order

SETTINGS_PREFIX = "AFLoc/"
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
HEATMAP_NODE_NAME = "AFLoc heatmap"
# Attribute marking segments this module created, so a new run can tell them from the user's.
DRAFT_ATTRIBUTE = "AFLoc.Draft"
TERMINOLOGY_RESOURCE = os.path.join("Terminology", "AFLocFindings.term.json")
VECTOR_VOLUME_CLASS = "vtkMRMLVectorVolumeNode"

# Name of the terminology context loaded from the module's resources (empty until loaded).
_loadedTerminology = ""


def loadTerminology(path):
    """Load the AFLoc findings context (a ``.term.json`` shipped in Resources) into Slicer, once.

    Returns the loaded context's name, or "" when Slicer refused the file (logged).
    """
    global _loadedTerminology
    if not _loadedTerminology:
        name = slicer.modules.terminologies.logic().LoadTerminologyFromFile(path)
        if not name:
            logging.warning(f"AFLoc: Slicer could not load the terminology file {path}; segments keep their codes")
        _loadedTerminology = name
    return _loadedTerminology


#
# AFLoc
#


class AFLoc(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AFLoc"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["AFLoc Label contributors"]
        self.parent.helpText = """
Type findings (e.g. <i>right pleural effusion; cardiomegaly</i>) and press Run: the AFLoc Label
server localizes each one on the selected chest X-ray. You get a heatmap overlay and a draft
segment per finding, named after it and coded with SNOMED CT, to edit in Segment Editor.
Accept saves the reviewed segmentation on the server as the final label; Keep draft saves it
as an unreviewed draft. Nothing about an image is sent before you agree to it.
"""
        self.parent.acknowledgementText = """
AFLoc is an annotation-free pathology localization method (vision-language pretraining on
radiographs and reports). The server side runs on MONAI Label.
"""
        # The findings' terminology is a file shipped with the module, loaded once Slicer has started.
        slicer.app.connect("startupCompleted()", self._onStartupCompleted)

    def _onStartupCompleted(self):
        loadTerminology(self.resourcePath(TERMINOLOGY_RESOURCE))


#
# AFLocWidget
#


class AFLocWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: server, image and segmentation, findings, draft review, settings, training.

    A draft stays bound to the nodes it was made on (``self.draft``: volume and segmentation node
    ids): changing a selector later never redirects the threshold, heatmap, Undo or Accept.
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.client = None
        self.history = PromptHistory()
        self.draft = None  # {"volume": node id, "segmentation": node id, "localization": Localization}
        self._tasks = {}  # name -> (SubprocessTask, on_done)
        self._pollTimer = None
        self._thresholdTimer = None

    # ------------------------------------------------------------------ setup
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AFLoc.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AFLocLogic()

        settings = qt.QSettings()
        self.ui.serverUrlEdit.text = settings.value(SETTINGS_PREFIX + "ServerUrl", DEFAULT_SERVER_URL)
        self.ui.userNameEdit.text = settings.value(SETTINGS_PREFIX + "UserName", "")
        self.history = PromptHistory.from_json(settings.value(SETTINGS_PREFIX + "PromptHistory", ""))
        self._refreshHistory()
        for index, pick in enumerate(QUICK_PICKS):
            button = qt.QPushButton(pick)
            button.toolTip = f"Add '{pick}' to the findings"
            button.connect("clicked()", lambda p=pick: self.onQuickPick(p))
            self.ui.quickPicksLayout.addWidget(button, index // 3, index % 3)
        self.ui.progressBar.hide()

        self.ui.connectButton.connect("clicked()", self.onConnect)
        self.ui.loginButton.connect("clicked()", self.onLogin)
        self.ui.forgetConsentButton.connect("clicked()", self.onForgetConsent)
        self.ui.runButton.connect("clicked()", self.onRun)
        self.ui.cancelButton.connect("clicked()", self.onCancel)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.showHeatmapCheckBox.connect("toggled(bool)", self.onShowHeatmap)
        self.ui.heatmapPromptCombo.connect("currentIndexChanged(int)", self.onHeatmapPromptChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSelectionChanged)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSelectionChanged)
        self.ui.undoButton.connect("clicked()", self.onUndo)
        self.ui.acceptButton.connect("clicked()", lambda: self.onSave(final=True))
        self.ui.keepDraftButton.connect("clicked()", lambda: self.onSave(final=False))
        self.ui.trainButton.connect("clicked()", self.onTrain)
        self.ui.stopTrainButton.connect("clicked()", self.onStopTraining)
        # A closed scene takes the draft's nodes with it: drop the draft and its files.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self._poll)
        # Dragging the slider fires many values: recompute once it rests.
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(150)
        self._thresholdTimer.connect("timeout()", self._applyThreshold)

        # Normally loaded at startup; a module added or reloaded later loads it here.
        loadTerminology(self.resourcePath(TERMINOLOGY_RESOURCE))
        self._refreshConsentStatus()
        self._updateButtons()

    def cleanup(self):
        for task, _ in self._tasks.values():
            task.cancel()
        self._tasks = {}
        if self._pollTimer:
            self._pollTimer.stop()
        if self._thresholdTimer:
            self._thresholdTimer.stop()
        self.removeObservers()
        if self.logic:
            self.logic.cleanup()

    # ------------------------------------------------------------------ background jobs
    def _start(self, name, job, args, onDone):
        """Run worker job ``job`` in its own process; ``onDone(task)`` runs here when it ends."""
        try:
            task = self.logic.startJob(job, args, name)
        except AFLocClientError as exc:
            self._showError(name, exc)
            return None
        self._tasks[name] = (task, onDone)
        self._pollTimer.start()
        self._updateButtons()
        return task

    def _poll(self):
        for name, (task, onDone) in list(self._tasks.items()):
            progress = task.progress
            if name == "run" and progress.message:
                self.ui.statusLabel.text = progress.message
                if progress.fraction is None:
                    self.ui.progressBar.setRange(0, 0)
                else:
                    self.ui.progressBar.setRange(0, 100)
                    self.ui.progressBar.value = int(progress.fraction * 100)
            elif name == "train" and progress.message:
                self.ui.trainStatusLabel.text = progress.message
            if task.done:
                del self._tasks[name]
                try:
                    onDone(task)
                except AFLocClientError as exc:
                    self._showError(name, exc)
                except Exception as exc:  # Slicer calls raise RuntimeError, numpy ValueError...: never "Done"
                    logging.exception(f"AFLoc {name} failed")
                    self._showError(name, AFLocClientError(f"{name} failed: {type(exc).__name__}: {exc}"))
                finally:
                    self._updateButtons()
        if not self._tasks:
            self._pollTimer.stop()

    def _busy(self, name):
        return name in self._tasks

    def _showError(self, what, error):
        logging.warning(f"AFLoc {what}: {error}")
        if what == "train" or what == "stop":
            self.ui.trainStatusLabel.text = str(error)
        elif what in ("connect", "login"):
            self.ui.serverStatusLabel.text = str(error)
        else:
            self.ui.statusLabel.text = str(error)
        if not isinstance(error, OperationCancelledError):
            slicer.util.errorDisplay(str(error), windowTitle="AFLoc")

    def _updateButtons(self):
        running = self._busy("run") or self._busy("save")
        self.ui.runButton.enabled = not running
        self.ui.cancelButton.enabled = self._busy("run")
        self.ui.progressBar.visible = self._busy("run")
        hasDraft = self.draft is not None
        self.ui.acceptButton.enabled = hasDraft and not running
        self.ui.keepDraftButton.enabled = hasDraft and not running
        self.ui.undoButton.enabled = self.logic is not None and self.logic.canUndo() and not running
        self.ui.thresholdSlider.enabled = hasDraft and bool(self.draft["localization"].heatmaps)
        self.ui.loginButton.enabled = not self._busy("login")
        self.ui.trainButton.enabled = not self._busy("train")
        self.ui.stopTrainButton.enabled = self._busy("train")

    # ------------------------------------------------------------------ server, login, consent
    def _serverUrl(self):
        url = self.ui.serverUrlEdit.text.strip() or DEFAULT_SERVER_URL
        client = AFLocClient(url)  # validates the URL (AFLocClientError if malformed)
        qt.QSettings().setValue(SETTINGS_PREFIX + "ServerUrl", client.url)
        return client.url

    def _server(self):
        """What a worker job needs to reach the server: URL and the session's access token."""
        return {"url": self._serverUrl(), "token": self.ui.tokenEdit.text.strip() or None, "timeout": 30.0}

    def onConnect(self):
        try:
            server = self._server()
        except AFLocClientError as exc:
            self._showError("connect", exc)
            return
        self.ui.serverStatusLabel.text = f"Connecting to {server['url']}..."

        def done(task):
            info = task.outcome()
            threshold = info.default_threshold
            suffix = f", default threshold {threshold:g}" if threshold is not None else ""
            name = info.name or "MONAI Label"
            trained_on = f"\nModel trained on: {info.trained_on}" if info.trained_on else ""
            self.ui.serverStatusLabel.text = f"Connected: {name} {info.version} at {info.url}{suffix}{trained_on}"

        self._start("connect", "connect", {"server": server}, done)

    def onLogin(self):
        username = self.ui.userNameEdit.text.strip()
        try:
            server = self._server()
        except AFLocClientError as exc:
            self._showError("login", exc)
            return
        qt.QSettings().setValue(SETTINGS_PREFIX + "UserName", username)
        password = self.ui.passwordEdit.text
        self.ui.passwordEdit.text = ""  # sent once, never kept
        self.ui.serverStatusLabel.text = f"Logging in to {server['url']} as {username}..."

        def done(task):
            self.ui.tokenEdit.text = task.outcome()
            self.ui.serverStatusLabel.text = f"Logged in as {username}; press Connect to check the server."

        self._start("login", "login", {"server": server, "username": username, "password": password}, done)

    def onForgetConsent(self):
        self.logic.forgetConsents()
        self._refreshConsentStatus()

    def _refreshConsentStatus(self):
        servers = self.logic.consentedServers()
        if servers:
            self.ui.consentStatusLabel.text = "Images are sent without asking to: " + ", ".join(servers)
        else:
            self.ui.consentStatusLabel.text = "The module asks before sending any image."
        self.ui.forgetConsentButton.enabled = bool(servers)

    # ------------------------------------------------------------------ prompts
    def _refreshHistory(self):
        text = self.ui.promptCombo.currentText
        self.ui.promptCombo.clear()
        for entry in self.history.entries:
            self.ui.promptCombo.addItem(entry)
        self.ui.promptCombo.setEditText(text)

    def onQuickPick(self, pick):
        self.ui.promptCombo.setEditText(add_quick_pick(self.ui.promptCombo.currentText, pick))

    # ------------------------------------------------------------------ run
    def onRun(self):
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if volumeNode is None:
            slicer.util.errorDisplay("Select the chest X-ray to localize findings on.", windowTitle="AFLoc")
            return
        promptText = self.ui.promptCombo.currentText
        try:
            server = self._server()
            replaced = workflow.conflicting_names(promptText, self._existingNames())
        except AFLocClientError as exc:
            self._showError("run", exc)
            return
        # Ask first: not even the image's name goes to the server before the user agrees.
        if not (self.logic.hasConsent(server["url"]) or self.logic.askConsent(server["url"], volumeNode.GetName())):
            self.ui.statusLabel.text = "Not run: nothing was sent, the image stays on this computer."
            self._refreshConsentStatus()
            return
        self._refreshConsentStatus()
        if replaced and not slicer.util.confirmYesNoDisplay(
            "The segmentation already has segments named " + ", ".join(f"'{n}'" for n in replaced)
            + ".\nReplace them with the new result? (No keeps them and adds the new ones under other names.)",
            windowTitle="AFLoc",
        ):
            replaced = []
        self.history.add(promptText)
        qt.QSettings().setValue(SETTINGS_PREFIX + "PromptHistory", self.history.to_json())
        self._refreshHistory()

        segmentationNode = self._segmentationNode(volumeNode)
        try:
            prepared, inputFolder = self.logic.exportImage(volumeNode)
        except (AFLocClientError, RuntimeError, ValueError) as exc:
            self._showError("run", AFLocClientError(f"cannot export the image '{volumeNode.GetName()}': {exc}"))
            return
        existing = [n for n in self.logic.segmentNames(segmentationNode) if n not in replaced]
        threshold = self.ui.thresholdSlider.value if self.draft is not None else None
        volumeId, segmentationId = volumeNode.GetID(), segmentationNode.GetID()
        args = {
            "server": server, "image": prepared, "prompt_text": promptText, "consent": True,
            "work_dir": self.logic.workDir(), "threshold": threshold, "existing_names": existing,
        }

        def done(task):
            shutil.rmtree(inputFolder, ignore_errors=True)  # the exported copy of the image
            localization = task.outcome()
            volume = slicer.mrmlScene.GetNodeByID(volumeId)
            segmentation = slicer.mrmlScene.GetNodeByID(segmentationId)
            if volume is None or segmentation is None:
                raise AFLocClientError("the image or segmentation of this run was removed from the scene; result dropped")
            self._showResult(localization, volume, segmentation, replaced)

        if self._start("run", "localize", args, done) is None:
            shutil.rmtree(inputFolder, ignore_errors=True)
        else:
            self.ui.statusLabel.text = "Starting..."

    def onCancel(self):
        if self._busy("run"):
            self._tasks["run"][0].cancel()
            self.ui.statusLabel.text = "Cancelling..."

    def _existingNames(self):
        node = self.ui.segmentationSelector.currentNode()
        return self.logic.segmentNames(node) if node is not None else []

    def _segmentationNode(self, volumeNode):
        node = self.ui.segmentationSelector.currentNode()
        if node is None:
            node = self.logic.createSegmentation(volumeNode)
            self.ui.segmentationSelector.setCurrentNode(node)
        return node

    def _showResult(self, localization, volumeNode, segmentationNode, replaced):
        try:
            self.logic.applyDraft(localization, segmentationNode, volumeNode, replaced)
        except Exception:
            self.logic.discardRunFiles(localization)
            raise
        self._releaseDraftFiles()
        self.draft = {"volume": volumeNode.GetID(), "segmentation": segmentationNode.GetID(), "localization": localization}
        self.ui.thresholdSlider.blockSignals(True)
        if localization.heatmaps:
            self.ui.thresholdSlider.value = localization.threshold
        self.ui.thresholdSlider.blockSignals(False)
        self.ui.heatmapPromptCombo.blockSignals(True)
        self.ui.heatmapPromptCombo.clear()
        for name in localization.segment_names:
            self.ui.heatmapPromptCombo.addItem(name)
        self.ui.heatmapPromptCombo.blockSignals(False)
        self._showHeatmap()
        self.ui.scoresLabel.text = workflow.format_findings(localization).replace("\n", "<br>")
        uploaded = " (image uploaded)" if localization.uploaded else ""
        note = localization.result.reading_note
        reading = f" {note}" if note else ""
        self.ui.statusLabel.text = (
            f"Draft ready in {localization.result.seconds:.1f} s{uploaded}.{reading} Edit it in Segment Editor, then Accept."
        )

    # ------------------------------------------------------------------ the draft and its nodes
    def _draftNodes(self):
        """``(volume, segmentation)`` the draft was made on, or None (and the draft dropped) if gone."""
        if self.draft is None:
            return None
        volume = slicer.mrmlScene.GetNodeByID(self.draft["volume"])
        segmentation = slicer.mrmlScene.GetNodeByID(self.draft["segmentation"])
        if volume is None or segmentation is None:
            self._dropDraft("The draft's image or segmentation was removed; the draft is closed.")
            return None
        return volume, segmentation

    def _releaseDraftFiles(self):
        """Delete the current draft's run folder (heatmaps, draft files): its data is in memory."""
        if self.draft is not None:
            self.logic.discardRunFiles(self.draft["localization"])

    def _dropDraft(self, message):
        self._releaseDraftFiles()
        self.draft = None
        self.logic.forgetDraft()
        self.ui.scoresLabel.text = ""
        self.ui.statusLabel.text = message
        self._updateButtons()

    def onSelectionChanged(self, node):
        nodes = self._draftNodes() if self.draft is not None else None
        if nodes is None:
            return
        volume, segmentation = nodes
        if (self.ui.inputVolumeSelector.currentNode() is not volume
                or self.ui.segmentationSelector.currentNode() is not segmentation):
            self.ui.statusLabel.text = (
                f"The open draft belongs to '{volume.GetName()}' / '{segmentation.GetName()}': the threshold, "
                "heatmap, Undo and Accept act on those. Run again to draft on the selected image."
            )

    def onSceneStartClose(self, caller, event):
        for name in ("run", "save"):
            if self._busy(name):
                task, _ = self._tasks.pop(name)
                task.cancel()
        if self._thresholdTimer:
            self._thresholdTimer.stop()
        self.draft = None
        self.logic.forgetDraft()
        self.logic.discardRuns()
        self.ui.scoresLabel.text = ""
        self.ui.statusLabel.text = "Scene closed: the draft was discarded."
        self._updateButtons()

    def onThresholdChanged(self, value):
        if self.draft is not None and self.draft["localization"].heatmaps:
            self._thresholdTimer.start()

    def _applyThreshold(self):
        nodes = self._draftNodes()
        if nodes is None:
            return
        volumeNode, segmentationNode = nodes
        try:
            edited = self.logic.editedDraftSegments(segmentationNode, volumeNode)
            if edited and not slicer.util.confirmYesNoDisplay(
                "You edited " + ", ".join(f"'{n}'" for n in edited)
                + ". Re-thresholding replaces these edits. Continue?",
                windowTitle="AFLoc",
            ):
                return
            localization = self.logic.rethreshold(
                self.draft["localization"], self.ui.thresholdSlider.value, segmentationNode, volumeNode
            )
        except (AFLocClientError, RuntimeError, ValueError) as exc:
            self._showError("threshold", AFLocClientError(f"re-thresholding failed: {exc}"))
            return
        self.draft["localization"] = localization
        self.ui.scoresLabel.text = workflow.format_findings(localization).replace("\n", "<br>")

    def onOpacityChanged(self, value):
        self.logic.setHeatmapOpacity(value)

    def onShowHeatmap(self, show):
        self._showHeatmap()

    def onHeatmapPromptChanged(self, index):
        self._showHeatmap()

    def _showHeatmap(self):
        nodes = self._draftNodes()
        if nodes is None or not self.draft["localization"].heatmaps:
            return
        volumeNode = nodes[0]
        if not self.ui.showHeatmapCheckBox.checked:
            self.logic.hideHeatmap(volumeNode)
            return
        index = max(0, self.ui.heatmapPromptCombo.currentIndex)
        self.logic.showHeatmap(self.draft["localization"], index, volumeNode, self.ui.opacitySlider.value)

    def onUndo(self):
        if self.logic.undo():
            self._releaseDraftFiles()
            self.draft = None
            self.ui.scoresLabel.text = ""
            self.ui.statusLabel.text = "Segmentation restored to its state before the draft."
        self._updateButtons()

    def onSave(self, final):
        nodes = self._draftNodes()
        if nodes is None:
            return
        segmentationNode = nodes[1]
        localization = self.draft["localization"]
        try:
            server = self._server()
            if final:
                # The saved file should say "completed" for the segments the user has now reviewed.
                self.logic.markAccepted(segmentationNode)
            path = self.logic.exportSegmentation(segmentationNode)
        except (AFLocClientError, RuntimeError, ValueError) as exc:
            self._showError("save", AFLocClientError(f"cannot save the segmentation: {exc}"))
            return
        what = "final label" if final else "draft"
        args = {"server": server, "image_id": localization.image.image_id, "path": path, "final": final,
                "localization": localization}

        def done(task):
            try:
                reply = task.outcome()
            finally:
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            self.ui.statusLabel.text = f"Saved on the server as the {what} of image '{reply.get('image', '')}'."

        self.ui.statusLabel.text = f"Saving the {what}..."
        self._start("save", "save", args, done)

    # ------------------------------------------------------------------ training
    def onTrain(self):
        try:
            server = self._server()
        except AFLocClientError as exc:
            self._showError("train", exc)
            return
        log = self.ui.trainLog

        def done(task):
            status = task.outcome()
            self.ui.trainStatusLabel.text = (
                f"Training {status.status.lower()} (started {status.start}, ended {status.end})."
            )
            log.setPlainText("\n".join(status.details))

        self.ui.trainLog.clear()
        self._start("train", "train", {"server": server}, done)

    def onStopTraining(self):
        if self._busy("train"):
            # Stop on the server, then stop following it.
            server = self._server()
            self._tasks.pop("train")[0].cancel()

            def done(task):
                status = task.outcome()
                self.ui.trainStatusLabel.text = "Training stopped." if status else "No training was running."

            self._start("stop", "stop_training", {"server": server}, done)
            self.ui.trainStatusLabel.text = "Stopping training..."


#
# AFLocLogic
#


class AFLocLogic(ScriptedLoadableModuleLogic):
    """Scene side of the module: export the image, show heatmaps, apply drafts, undo."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._workDir = None
        self._undoState = None  # (segmentation node id, vtkSegmentation copy)
        self._draftSegmentIds = []
        self._draftMaskDigests = {}

    # ------------------------------------------------------------------ temporary files
    def workDir(self):
        """This session's temporary folder (image copies, job files, drafts); see :meth:`cleanup`."""
        if self._workDir is None or not os.path.isdir(self._workDir):
            self._workDir = tempfile.mkdtemp(prefix="AFLoc-")
        return self._workDir

    def discardRunFiles(self, localization):
        """Delete the folder of one run (``run-*`` under :meth:`workDir`), once its draft is closed."""
        folder = os.path.dirname(str(localization.draft_path))
        if self._workDir and os.path.basename(folder).startswith("run-") and os.path.dirname(folder) == self._workDir:
            shutil.rmtree(folder, ignore_errors=True)

    def discardRuns(self):
        """Delete the files of earlier runs (their drafts are gone with the scene)."""
        if self._workDir and os.path.isdir(self._workDir):
            for entry in os.listdir(self._workDir):
                if entry.startswith(("run-", "input-", "save-")):
                    shutil.rmtree(os.path.join(self._workDir, entry), ignore_errors=True)

    def cleanup(self):
        """Delete the temporary folder and everything in it."""
        if self._workDir:
            shutil.rmtree(self._workDir, ignore_errors=True)
            self._workDir = None

    # ------------------------------------------------------------------ worker jobs
    def startJob(self, job, args, name=None):
        """Start ``AFLocLib.worker`` job ``job`` in a separate process under Slicer's PythonSlicer."""
        python = shutil.which("PythonSlicer")
        if not python:
            raise AFLocClientError("cannot find Slicer's PythonSlicer executable to run the AFLoc worker")
        folder = tempfile.mkdtemp(prefix="job-", dir=self.workDir())
        return SubprocessTask(WorkerCommand(python, worker_script()), job, args, folder, name=name).start()

    # ------------------------------------------------------------------ consent
    def consentedServers(self):
        value = qt.QSettings().value(SETTINGS_PREFIX + "ConsentedServers", "")
        return [u for u in (value or "").split("\n") if u]

    def hasConsent(self, url):
        return url in self.consentedServers()

    def forgetConsents(self):
        """Undo every "Don't ask again": the next run asks before sending anything."""
        qt.QSettings().remove(SETTINGS_PREFIX + "ConsentedServers")

    def askConsent(self, url, imageName):
        """Ask before anything about an image leaves the computer; remembered per server if the user says so."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("AFLoc: send image to server?")
        box.setIcon(qt.QMessageBox.Question)
        box.setText(
            f"To localize findings on '{imageName}', its name and pixels are sent to {url}, "
            "which stores the image.\n\n"
            "Only send images you are allowed to share with that server."
        )
        box.setStandardButtons(qt.QMessageBox.Yes | qt.QMessageBox.No)
        box.setDefaultButton(qt.QMessageBox.No)
        remember = qt.QCheckBox("Don't ask again for this server (undo in Settings)")
        box.setCheckBox(remember)
        agreed = box.exec_() == qt.QMessageBox.Yes
        if agreed and remember.checked:
            qt.QSettings().setValue(SETTINGS_PREFIX + "ConsentedServers", "\n".join(self.consentedServers() + [url]))
        return agreed

    # ------------------------------------------------------------------ image
    def volumeGeometry(self, volumeNode):
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        return ras_to_lps(slicer.util.arrayFromVTKMatrix(ijkToRas))

    def exportImage(self, volumeNode):
        """``(PreparedImage, folder)``: the file to upload if the server lacks the image, and the
        temporary folder holding the copy (delete it when the run ends).

        A radiograph loaded from DICOM is sent as its original DICOM file (no copy): the server then
        applies the DICOM display transforms (VOI LUT, MONOCHROME1 inversion) that a volume export
        loses. A colour (vector) volume is written as an RGB PNG; any other volume is exported as NIfTI.
        """
        voxels = slicer.util.arrayFromVolume(volumeNode)
        ijkToLps = self.volumeGeometry(volumeNode)
        imageId = workflow.volume_image_id(volumeNode.GetName(), voxels, ijkToLps)
        folder = tempfile.mkdtemp(prefix="input-", dir=self.workDir())
        source = self._dicomFile(volumeNode)
        if source:
            path = source
        elif volumeNode.IsA(VECTOR_VOLUME_CLASS) and voxels.ndim == 4:
            path = str(write_png(os.path.join(folder, imageId + ".png"), color_pixels(voxels)))
        else:
            path = os.path.join(folder, imageId + ".nii.gz")
            # exportNode leaves the node's storage node alone; its default `properties` dict is shared
            # between calls inside Slicer (it keeps the last file format), so always pass a new one.
            if not slicer.util.exportNode(volumeNode, path, {}):
                shutil.rmtree(folder, ignore_errors=True)
                raise AFLocClientError(f"Slicer could not write the image to {path} (see the application log)")
        shape = tuple(int(s) for s in from_slicer_order(voxels[..., 0] if voxels.ndim == 4 else voxels).shape)
        return workflow.PreparedImage(path=path, image_id=imageId, ijk_to_lps=ijkToLps, shape=shape), folder

    def _dicomFile(self, volumeNode):
        """The DICOM file a single-image volume was loaded from, if any."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if len(uids) != 1 or database is None:
            return None
        path = database.fileForInstance(uids[0])
        return path if path and os.path.isfile(path) else None

    # ------------------------------------------------------------------ segmentation
    def createSegmentation(self, volumeNode):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} AFLoc")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        return node

    def segmentNames(self, segmentationNode):
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]

    def _segmentIdByName(self, segmentationNode, name):
        segmentation = segmentationNode.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            if segmentation.GetNthSegment(i).GetName() == name:
                return segmentation.GetNthSegmentID(i)
        return None

    def _snapshot(self, segmentationNode):
        copy = slicer.vtkSegmentation()
        copy.DeepCopy(segmentationNode.GetSegmentation())
        self._undoState = (segmentationNode.GetID(), copy)

    def canUndo(self):
        return self._undoState is not None and slicer.mrmlScene.GetNodeByID(self._undoState[0]) is not None

    def undo(self):
        """Put back the draft's segmentation as it was before the last draft; False if there is no state."""
        if not self.canUndo():
            self._undoState = None
            return False
        segmentationNode = slicer.mrmlScene.GetNodeByID(self._undoState[0])
        segmentationNode.GetSegmentation().DeepCopy(self._undoState[1])
        segmentationNode.Modified()
        self.forgetDraft()
        return True

    def forgetDraft(self):
        self._undoState = None
        self._draftSegmentIds = []
        self._draftMaskDigests = {}

    def applyDraft(self, localization, segmentationNode, volumeNode, replaceNames=()):
        """Add the draft's segments; only segments in ``replaceNames`` (confirmed by the user) go.

        All or nothing: if anything fails, the segmentation is put back as it was and the error raised.
        """
        self._snapshot(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        loaded = None
        try:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            for name in replaceNames:
                segmentId = self._segmentIdByName(segmentationNode, name)
                if segmentId:
                    segmentation.RemoveSegment(segmentId)
            loaded = slicer.util.loadSegmentation(str(localization.draft_path), {})
            source = loaded.GetSegmentation()
            draftIds = []
            for i in range(source.GetNumberOfSegments()):
                sourceId = source.GetNthSegmentID(i)
                # Names were made unique against the user's segments already; IDs must be too.
                segmentId = segmentation.GenerateUniqueSegmentID(sourceId)
                segment = slicer.vtkSegment()
                segment.DeepCopy(source.GetSegment(sourceId))
                segment.SetTag(DRAFT_ATTRIBUTE, "1")
                if not segmentation.AddSegment(segment, segmentId):
                    raise AFLocClientError(f"Slicer refused to add the draft segment '{segment.GetName()}'")
                draftIds.append(segmentId)
            self._draftSegmentIds = draftIds
            self._rememberDraftMasks(segmentationNode, volumeNode)
        except Exception:
            segmentation.DeepCopy(self._undoState[1])
            segmentationNode.Modified()
            self.forgetDraft()
            raise
        finally:
            if loaded is not None:
                slicer.mrmlScene.RemoveNode(loaded)

    def _maskDigest(self, segmentationNode, segmentId, volumeNode):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        return hash(np.packbits(mask > 0).tobytes())

    def _rememberDraftMasks(self, segmentationNode, volumeNode):
        self._draftMaskDigests = {
            segmentId: self._maskDigest(segmentationNode, segmentId, volumeNode) for segmentId in self._draftSegmentIds
        }

    def editedDraftSegments(self, segmentationNode, volumeNode):
        """Names of draft segments the user changed since the module last wrote them."""
        edited = []
        for segmentId, digest in self._draftMaskDigests.items():
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            if segment is not None and self._maskDigest(segmentationNode, segmentId, volumeNode) != digest:
                edited.append(segment.GetName())
        return edited

    def rethreshold(self, localization, threshold, segmentationNode, volumeNode):
        """Recompute the draft at ``threshold`` locally and write the masks into the draft segments."""
        segmentation = segmentationNode.GetSegmentation()
        others = [n for n in self.segmentNames(segmentationNode)
                  if self._segmentIdByName(segmentationNode, n) not in self._draftSegmentIds]
        updated = workflow.redraft(localization, threshold, existing_names=others)
        for segmentId, segmentName in zip(self._draftSegmentIds, updated.segment_names):
            if segmentation.GetSegment(segmentId) is None:
                continue  # the user deleted it: leave it deleted
            mask = updated.draft.mask(segmentName).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                to_slicer_order(mask), segmentationNode, segmentId, volumeNode
            )
        self._rememberDraftMasks(segmentationNode, volumeNode)
        return updated

    def markAccepted(self, segmentationNode):
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        for segmentId in self._draftSegmentIds:
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            if segment is not None:
                logic.SetSegmentStatus(segment, logic.Completed)

    def exportSegmentation(self, segmentationNode):
        """Write the segmentation to a new temporary ``.seg.nrrd`` (its folder is the caller's to delete)."""
        folder = tempfile.mkdtemp(prefix="save-", dir=self.workDir())
        path = os.path.join(folder, "reviewed.seg.nrrd")
        if not slicer.util.exportNode(segmentationNode, path, {}):
            shutil.rmtree(folder, ignore_errors=True)
            raise AFLocClientError(f"Slicer could not write the segmentation to {path} (see the application log)")
        return path

    # ------------------------------------------------------------------ heatmap overlay
    def showHeatmap(self, localization, index, volumeNode, opacity):
        """Show prompt ``index``'s heatmap as a coloured foreground layer over the image."""
        node = slicer.mrmlScene.GetFirstNodeByName(HEATMAP_NODE_NAME)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", HEATMAP_NODE_NAME)
            node.CreateDefaultDisplayNodes()
        slicer.util.updateVolumeFromArray(node, to_slicer_order(localization.heatmaps[index]))
        ijkToRas = slicer.util.vtkMatrixFromArray(lps_to_ras(localization.image.ijk_to_lps))
        node.SetIJKToRASMatrix(ijkToRas)
        display = node.GetDisplayNode()
        colorNode = slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
        display.SetAndObserveColorNodeID(colorNode.GetID() if colorNode else "vtkMRMLColorTableNodeRainbow")
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        # Below 0 the map says "not this finding": leave the image unpainted there.
        display.ApplyThresholdOn()
        display.SetLowerThreshold(0.0)
        display.SetUpperThreshold(1.0)
        slicer.util.setSliceViewerLayers(background=volumeNode, foreground=node, foregroundOpacity=opacity)

    def hideHeatmap(self, volumeNode):
        slicer.util.setSliceViewerLayers(background=volumeNode, foreground=None)

    def setHeatmapOpacity(self, opacity):
        for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            compositeNode.SetForegroundOpacity(opacity)


#
# AFLocTest
#


class AFLocTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer against a live AFLoc Label server (``AFLOC_SERVER_URL``, default local).

    Uploads a synthetic image and saves labels on that server: point it at a test server.
    """

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_localize_review_save()

    def test_localize_review_save(self):
        import unittest

        url = os.environ.get("AFLOC_SERVER_URL", DEFAULT_SERVER_URL)
        client = AFLocClient(url)
        try:
            info = client.check_connection()
        except AFLocClientError as exc:
            raise unittest.SkipTest(f"no AFLoc Label server: {exc}")
        self.delayDisplay(f"Connected to {info.url}")
        logic = AFLocLogic()
        try:
            # The worker process (what the module's buttons use) runs under this Slicer's PythonSlicer.
            # A separate process needs nothing from this thread, so blocking here is fine.
            task = logic.startJob("connect", {"server": {"url": url, "token": None}})
            self.assertTrue(task.wait(60), "the AFLoc worker process did not finish within 60 s")
            self.assertEqual(task.outcome().url, info.url)
            self.delayDisplay("Worker process answered")
            self._localizeReviewSave(client, logic)
        finally:
            logic.cleanup()

    def _localizeReviewSave(self, client, logic):
        # A synthetic radiograph-like image (one slice), so the test needs no data download.
        rows, cols = np.mgrid[0:256, 0:224]
        pixels = (100 + 80 * np.sin(rows / 20.0) * np.cos(cols / 25.0)).astype(np.int16)[np.newaxis]
        volumeNode = slicer.util.addVolumeFromArray(pixels, name="AFLocTestImage")
        segmentationNode = logic.createSegmentation(volumeNode)
        userSegment = segmentationNode.GetSegmentation().AddEmptySegment("mine", "mine")

        prepared, folder = logic.exportImage(volumeNode)
        prompts = "right pleural effusion; cardiomegaly"
        localization = workflow.localize(client, prepared, prompts, True, logic.workDir())
        shutil.rmtree(folder, ignore_errors=True)
        logic.applyDraft(localization, segmentationNode, volumeNode)
        names = logic.segmentNames(segmentationNode)
        self.assertEqual(names, ["mine", "right pleural effusion", "cardiomegaly"])
        self.assertIsNotNone(segmentationNode.GetSegmentation().GetSegment(userSegment))
        effusionId = logic._segmentIdByName(segmentationNode, "right pleural effusion")
        effusion = segmentationNode.GetSegmentation().GetSegment(effusionId)
        entry = vtk.mutable("")
        self.assertTrue(effusion.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry))
        self.assertIn("60046008", str(entry))
        self.delayDisplay("Draft segments named and coded")

        logic.showHeatmap(localization, 0, volumeNode, 0.4)
        localization = logic.rethreshold(localization, 0.5, segmentationNode, volumeNode)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentationNode, logic._segmentIdByName(segmentationNode, "cardiomegaly"), volumeNode
        )
        expected = to_slicer_order((localization.heatmaps[1] >= 0.5).astype(np.uint8))
        self.assertTrue(np.array_equal(mask > 0, expected > 0))

        # A second run of the same prompts: its segment ids clash with the first draft's.
        again = workflow.localize(client, prepared, prompts, True, logic.workDir())
        logic.applyDraft(again, segmentationNode, volumeNode)
        self.assertEqual(logic.segmentNames(segmentationNode)[3:], ["right pleural effusion", "cardiomegaly"])
        self.assertEqual(len(set(segmentationNode.GetSegmentation().GetSegmentIDs())), 5)
        self.assertTrue(logic.undo())
        self.assertEqual(logic.segmentNames(segmentationNode), names)
        self.delayDisplay("Clashing segment ids made unique; undo restored the segmentation")

        path = logic.exportSegmentation(segmentationNode)
        reply = workflow.save_review(client, prepared.image_id, path, True, localization)
        self.assertEqual(reply.get("image"), prepared.image_id)
        workflow.save_review(client, prepared.image_id, path, False, localization)
        self.delayDisplay("Saved final label and draft on the server")
