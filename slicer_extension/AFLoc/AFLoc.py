"""AFLoc: text-prompted localization of chest X-ray findings in 3D Slicer.

This file is the Slicer side only: widgets, scene nodes and dialogs. Everything that runs
without Slicer (the server client, prompts, terminology, ``.seg.nrrd`` conversion, local
re-thresholding, the Run / Accept / Training steps) lives in ``AFLocLib`` next to this file and
is tested outside Slicer against a real server.
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
    ConsentRequiredError,
    OperationCancelledError,
    PromptHistory,
    add_quick_pick,
    write_terminology_context,
)
from AFLocLib import workflow
from AFLocLib.tasks import BackgroundTask
from AFLocLib.volume import from_slicer_order, lps_to_ras, ras_to_lps, to_slicer_order

SETTINGS_PREFIX = "AFLoc/"
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
HEATMAP_NODE_NAME = "AFLoc heatmap"
# Attribute marking segments this module created, so a new run can tell them from the user's.
DRAFT_ATTRIBUTE = "AFLoc.Draft"


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
as an unreviewed draft. No image is sent before you agree to it.
"""
        self.parent.acknowledgementText = """
AFLoc is an annotation-free pathology localization method (vision-language pretraining on
radiographs and reports). The server side runs on MONAI Label.
"""


#
# AFLocWidget
#


class AFLocWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: server, image and segmentation, findings, draft review, training."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.client = None
        self.history = PromptHistory()
        self.localization = None
        self._tasks = {}  # name -> (BackgroundTask, on_done)
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
        self.history = PromptHistory.from_json(settings.value(SETTINGS_PREFIX + "PromptHistory", ""))
        self._refreshHistory()
        for index, pick in enumerate(QUICK_PICKS):
            button = qt.QPushButton(pick)
            button.toolTip = f"Add '{pick}' to the findings"
            button.connect("clicked()", lambda p=pick: self.onQuickPick(p))
            self.ui.quickPicksLayout.addWidget(button, index // 3, index % 3)
        self.ui.progressBar.hide()

        self.ui.connectButton.connect("clicked()", self.onConnect)
        self.ui.runButton.connect("clicked()", self.onRun)
        self.ui.cancelButton.connect("clicked()", self.onCancel)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.showHeatmapCheckBox.connect("toggled(bool)", self.onShowHeatmap)
        self.ui.heatmapPromptCombo.connect("currentIndexChanged(int)", self.onHeatmapPromptChanged)
        self.ui.undoButton.connect("clicked()", self.onUndo)
        self.ui.acceptButton.connect("clicked()", lambda: self.onSave(final=True))
        self.ui.keepDraftButton.connect("clicked()", lambda: self.onSave(final=False))
        self.ui.trainButton.connect("clicked()", self.onTrain)
        self.ui.stopTrainButton.connect("clicked()", self.onStopTraining)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self._poll)
        # Dragging the slider fires many values: recompute once it rests.
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(150)
        self._thresholdTimer.connect("timeout()", self._applyThreshold)

        self.logic.loadTerminology()
        self._updateButtons()

    def cleanup(self):
        for task, _ in self._tasks.values():
            task.cancel()
        if self._pollTimer:
            self._pollTimer.stop()
        self.removeObservers()

    # ------------------------------------------------------------------ background tasks
    def _start(self, name, job, onDone):
        """Run ``job(context)`` on a worker thread; ``onDone(task)`` runs here when it ends."""
        task = BackgroundTask(job, name=name).start()
        self._tasks[name] = (task, onDone)
        self._pollTimer.start()
        self._updateButtons()
        return task

    def _poll(self):
        for name, (task, onDone) in list(self._tasks.items()):
            progress = task.progress
            if name == "run":
                self.ui.statusLabel.text = progress.message
                if progress.fraction is None:
                    self.ui.progressBar.setRange(0, 0)
                else:
                    self.ui.progressBar.setRange(0, 100)
                    self.ui.progressBar.value = int(progress.fraction * 100)
            elif name == "train":
                self.ui.trainStatusLabel.text = progress.message
            if task.done:
                del self._tasks[name]
                try:
                    onDone(task)
                except AFLocClientError as exc:
                    self._showError(name, exc)
                finally:
                    self._updateButtons()
        if not self._tasks:
            self._pollTimer.stop()

    def _busy(self, name):
        return name in self._tasks

    def _showError(self, what, error):
        logging.warning(f"AFLoc {what}: {error}")
        if what == "train":
            self.ui.trainStatusLabel.text = str(error)
        else:
            self.ui.statusLabel.text = str(error)
        if not isinstance(error, OperationCancelledError):
            slicer.util.errorDisplay(str(error), windowTitle="AFLoc")

    def _updateButtons(self):
        running = self._busy("run") or self._busy("save")
        self.ui.runButton.enabled = not running
        self.ui.cancelButton.enabled = self._busy("run")
        self.ui.progressBar.visible = self._busy("run")
        hasDraft = self.localization is not None
        self.ui.acceptButton.enabled = hasDraft and not running
        self.ui.keepDraftButton.enabled = hasDraft and not running
        self.ui.undoButton.enabled = self.logic is not None and self.logic.canUndo() and not running
        self.ui.thresholdSlider.enabled = hasDraft and bool(self.localization.heatmaps)
        self.ui.trainButton.enabled = not self._busy("train")
        self.ui.stopTrainButton.enabled = self._busy("train")

    # ------------------------------------------------------------------ server
    def _client(self):
        url = self.ui.serverUrlEdit.text.strip() or DEFAULT_SERVER_URL
        if self.client is None or self.client.url.rstrip("/") != url.rstrip("/"):
            self.client = AFLocClient(url)  # validates the URL (AFLocClientError if malformed)
            qt.QSettings().setValue(SETTINGS_PREFIX + "ServerUrl", url)
        return self.client

    def onConnect(self):
        try:
            client = self._client()
        except AFLocClientError as exc:
            self._showError("connect", exc)
            return
        self.ui.serverStatusLabel.text = f"Connecting to {client.url}..."

        def done(task):
            try:
                info = task.outcome()
            except AFLocClientError as exc:
                self.ui.serverStatusLabel.text = str(exc)
                raise
            threshold = info.default_threshold
            suffix = f", default threshold {threshold:g}" if threshold is not None else ""
            name = info.name or "MONAI Label"
            self.ui.serverStatusLabel.text = f"Connected: {name} {info.version} at {info.url}{suffix}"

        self._start("connect", lambda context: client.check_connection(cancel=context.cancel), done)

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
            client = self._client()
            segmentationNode = self._segmentationNode(volumeNode)
            replaced = workflow.conflicting_names(promptText, self.logic.segmentNames(segmentationNode))
        except AFLocClientError as exc:
            self._showError("run", exc)
            return
        if replaced and not slicer.util.confirmYesNoDisplay(
            "The segmentation already has segments named " + ", ".join(f"'{n}'" for n in replaced)
            + ".\nReplace them with the new result? (No keeps them and adds the new ones under other names.)",
            windowTitle="AFLoc",
        ):
            replaced = []
        self.history.add(promptText)
        qt.QSettings().setValue(SETTINGS_PREFIX + "PromptHistory", self.history.to_json())
        self._refreshHistory()
        self._run(client, volumeNode, segmentationNode, promptText, replaced, self.logic.hasConsent(client.url))

    def _run(self, client, volumeNode, segmentationNode, promptText, replaced, consent):
        prepared = self.logic.exportImage(volumeNode)
        existing = [n for n in self.logic.segmentNames(segmentationNode) if n not in replaced]
        threshold = self.ui.thresholdSlider.value if self.localization is not None else None

        def job(context):
            return workflow.localize(
                client, prepared, promptText, consent, self.logic.workDir(), threshold, existing, context
            )

        def done(task):
            try:
                localization = task.outcome()
            except ConsentRequiredError:
                # Nothing was sent. Ask here, on the UI thread, and run again only if allowed.
                if self.logic.askConsent(client.url, volumeNode.GetName()):
                    self._run(client, volumeNode, segmentationNode, promptText, replaced, True)
                else:
                    self.ui.statusLabel.text = "Not run: the image stays on this computer."
                return
            self._showResult(localization, volumeNode, segmentationNode, replaced)

        self._start("run", job, done)

    def onCancel(self):
        if self._busy("run"):
            self._tasks["run"][0].cancel()
            self.ui.statusLabel.text = "Cancelling..."

    def _segmentationNode(self, volumeNode):
        node = self.ui.segmentationSelector.currentNode()
        if node is None:
            node = self.logic.createSegmentation(volumeNode)
            self.ui.segmentationSelector.setCurrentNode(node)
        return node

    def _showResult(self, localization, volumeNode, segmentationNode, replaced):
        self.logic.applyDraft(localization, segmentationNode, volumeNode, replaced)
        self.localization = localization
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
        self.ui.statusLabel.text = (
            f"Draft ready in {localization.result.seconds:.1f} s{uploaded}. Edit it in Segment Editor, then Accept."
        )

    # ------------------------------------------------------------------ draft review
    def onThresholdChanged(self, value):
        if self.localization is not None and self.localization.heatmaps:
            self._thresholdTimer.start()

    def _applyThreshold(self):
        if self.localization is None:
            return
        segmentationNode = self.ui.segmentationSelector.currentNode()
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if segmentationNode is None or volumeNode is None:
            return
        edited = self.logic.editedDraftSegments(segmentationNode, volumeNode)
        if edited and not slicer.util.confirmYesNoDisplay(
            "You edited " + ", ".join(f"'{n}'" for n in edited)
            + ". Re-thresholding replaces these edits. Continue?",
            windowTitle="AFLoc",
        ):
            return
        self.localization = self.logic.rethreshold(
            self.localization, self.ui.thresholdSlider.value, segmentationNode, volumeNode
        )
        self.ui.scoresLabel.text = workflow.format_findings(self.localization).replace("\n", "<br>")

    def onOpacityChanged(self, value):
        self.logic.setHeatmapOpacity(value)

    def onShowHeatmap(self, show):
        self._showHeatmap()

    def onHeatmapPromptChanged(self, index):
        self._showHeatmap()

    def _showHeatmap(self):
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if self.localization is None or not self.localization.heatmaps or volumeNode is None:
            return
        if not self.ui.showHeatmapCheckBox.checked:
            self.logic.hideHeatmap(volumeNode)
            return
        index = max(0, self.ui.heatmapPromptCombo.currentIndex)
        self.logic.showHeatmap(self.localization, index, volumeNode, self.ui.opacitySlider.value)

    def onUndo(self):
        segmentationNode = self.ui.segmentationSelector.currentNode()
        if segmentationNode is not None and self.logic.undo(segmentationNode):
            self.localization = None
            self.ui.scoresLabel.text = ""
            self.ui.statusLabel.text = "Segmentation restored to its state before the draft."
        self._updateButtons()

    def onSave(self, final):
        segmentationNode = self.ui.segmentationSelector.currentNode()
        if segmentationNode is None or self.localization is None:
            return
        client = self._client()
        if final:
            # The saved file should say "completed" for the segments the user has now reviewed.
            self.logic.markAccepted(segmentationNode)
        path = self.logic.exportSegmentation(segmentationNode)
        localization = self.localization
        what = "final label" if final else "draft"

        def job(context):
            return workflow.save_review(client, localization.image.image_id, path, final, localization, context)

        def done(task):
            reply = task.outcome()
            self.ui.statusLabel.text = f"Saved on the server as the {what} of image '{reply.get('image', '')}'."

        self._start("save", job, done)

    # ------------------------------------------------------------------ training
    def onTrain(self):
        try:
            client = self._client()
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
        self._start("train", lambda context: workflow.train(client, context=context), done)

    def onStopTraining(self):
        if self._busy("train"):
            # Stop on the server, then stop following it.
            client = self._client()
            self._tasks["train"][0].cancel()

            def done(task):
                status = task.outcome()
                self.ui.trainStatusLabel.text = "Training stopped." if status else "No training was running."

            self._start("stop", lambda context: client.stop_training(cancel=context.cancel), done)
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

    def workDir(self):
        if self._workDir is None:
            self._workDir = tempfile.mkdtemp(prefix="AFLoc-")
        return self._workDir

    # ------------------------------------------------------------------ terminology and consent
    def loadTerminology(self):
        """Make the AFLoc findings selectable in Segment Editor's terminology picker."""
        path = os.path.join(self.workDir(), "AFLocFindings.term.json")
        write_terminology_context(path)
        try:
            slicer.modules.terminologies.logic().LoadTerminologyFromFile(path)
        except AttributeError:
            logging.warning("AFLoc: this Slicer cannot load terminology files; segments keep their codes anyway")

    def hasConsent(self, url):
        consented = qt.QSettings().value(SETTINGS_PREFIX + "ConsentedServers", "")
        return url in (consented or "").split("\n")

    def askConsent(self, url, imageName):
        """Ask before any image leaves the computer; remembered per server if the user says so."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("AFLoc: send image to server?")
        box.setIcon(qt.QMessageBox.Question)
        box.setText(
            f"The image '{imageName}' is not on the AFLoc server yet.\n\n"
            f"To localize findings it must be uploaded to {url} and is stored there.\n"
            "Only upload images you are allowed to share with that server."
        )
        box.setStandardButtons(qt.QMessageBox.Yes | qt.QMessageBox.No)
        box.setDefaultButton(qt.QMessageBox.No)
        remember = qt.QCheckBox("Don't ask again for this server")
        box.setCheckBox(remember)
        agreed = box.exec_() == qt.QMessageBox.Yes
        if agreed and remember.checked:
            settings = qt.QSettings()
            consented = [u for u in (settings.value(SETTINGS_PREFIX + "ConsentedServers", "") or "").split("\n") if u]
            settings.setValue(SETTINGS_PREFIX + "ConsentedServers", "\n".join(consented + [url]))
        return agreed

    # ------------------------------------------------------------------ image
    def volumeGeometry(self, volumeNode):
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        return ras_to_lps(slicer.util.arrayFromVTKMatrix(ijkToRas))

    def exportImage(self, volumeNode):
        """The file to upload if the server lacks the image, described for the workflow.

        A radiograph loaded from DICOM is sent as its original DICOM file: the server then applies
        the DICOM display transforms (VOI LUT, MONOCHROME1 inversion) that a volume export loses.
        Anything else is exported as NIfTI.
        """
        voxels = slicer.util.arrayFromVolume(volumeNode)
        ijkToLps = self.volumeGeometry(volumeNode)
        imageId = workflow.volume_image_id(volumeNode.GetName(), voxels, ijkToLps)
        source = self._dicomFile(volumeNode)
        path = os.path.join(self.workDir(), imageId + (".dcm" if source else ".nii.gz"))
        if not os.path.exists(path):
            if source:
                shutil.copyfile(source, path)
            else:
                # exportNode leaves the node's own storage (and the scene's "modified" state) alone.
                export = getattr(slicer.util, "exportNode", None) or slicer.util.saveNode
                export(volumeNode, path)
        shape = tuple(int(s) for s in from_slicer_order(voxels).shape[:3])
        return workflow.PreparedImage(path=path, image_id=imageId, ijk_to_lps=ijkToLps, shape=shape)

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
        if slicer.mrmlScene.GetUndoFlag():
            slicer.mrmlScene.SaveStateForUndo()

    def canUndo(self):
        return self._undoState is not None

    def undo(self, segmentationNode):
        """Put back the segments as they were before the last draft; False if there is no state."""
        if self._undoState is None or self._undoState[0] != segmentationNode.GetID():
            return False
        segmentationNode.GetSegmentation().DeepCopy(self._undoState[1])
        segmentationNode.Modified()
        self._undoState = None
        self._draftSegmentIds = []
        self._draftMaskDigests = {}
        return True

    def applyDraft(self, localization, segmentationNode, volumeNode, replaceNames=()):
        """Add the draft's segments; only segments in ``replaceNames`` (confirmed by the user) go."""
        self._snapshot(segmentationNode)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        for name in replaceNames:
            segmentId = self._segmentIdByName(segmentationNode, name)
            if segmentId:
                segmentation.RemoveSegment(segmentId)
        loaded = slicer.util.loadSegmentation(str(localization.draft_path))
        try:
            source = loaded.GetSegmentation()
            self._draftSegmentIds = []
            for i in range(source.GetNumberOfSegments()):
                sourceId = source.GetNthSegmentID(i)
                # Names were made unique against the user's segments already; IDs must be too.
                segmentId = sourceId
                if segmentation.GetSegment(sourceId) is not None:
                    segmentId = segmentation.GenerateUniqueSegmentID(sourceId)
                    source.ChangeSegmentId(sourceId, segmentId)
                segmentation.CopySegmentFromSegmentation(source, segmentId, False)
                segmentation.GetSegment(segmentId).SetTag(DRAFT_ATTRIBUTE, "1")
                self._draftSegmentIds.append(segmentId)
        finally:
            slicer.mrmlScene.RemoveNode(loaded)
        self._rememberDraftMasks(segmentationNode, volumeNode)

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
        path = os.path.join(self.workDir(), "reviewed.seg.nrrd")
        export = getattr(slicer.util, "exportNode", None) or slicer.util.saveNode
        export(segmentationNode, path)
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
    """Runs inside Slicer against a live AFLoc Label server (``AFLOC_SERVER_URL``, default local)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

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

        # A synthetic radiograph-like image (one slice), so the test needs no data download.
        rows, cols = np.mgrid[0:256, 0:224]
        pixels = (100 + 80 * np.sin(rows / 20.0) * np.cos(cols / 25.0)).astype(np.int16)[np.newaxis]
        volumeNode = slicer.util.addVolumeFromArray(pixels, name="AFLocTestImage")
        logic = AFLocLogic()
        segmentationNode = logic.createSegmentation(volumeNode)
        userSegment = segmentationNode.GetSegmentation().AddEmptySegment("mine", "mine")

        prepared = logic.exportImage(volumeNode)
        prompts = "right pleural effusion; cardiomegaly"
        localization = workflow.localize(client, prepared, prompts, True, logic.workDir())
        logic.applyDraft(localization, segmentationNode, volumeNode)
        names = logic.segmentNames(segmentationNode)
        self.assertEqual(names, ["mine", "right pleural effusion", "cardiomegaly"])
        self.assertIsNotNone(segmentationNode.GetSegmentation().GetSegment(userSegment))
        effusionId = logic._segmentIdByName(segmentationNode, "right pleural effusion")
        effusion = segmentationNode.GetSegmentation().GetSegment(effusionId)
        self.assertIn("60046008", effusion.GetTag("TerminologyEntry") or "")
        self.delayDisplay("Draft segments named and coded")

        logic.showHeatmap(localization, 0, volumeNode, 0.4)
        localization = logic.rethreshold(localization, 0.5, segmentationNode, volumeNode)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentationNode, logic._segmentIdByName(segmentationNode, "cardiomegaly"), volumeNode
        )
        expected = to_slicer_order((localization.heatmaps[1] >= 0.5).astype(np.uint8))
        self.assertTrue(np.array_equal(mask > 0, expected > 0))

        self.assertTrue(logic.undo(segmentationNode))
        self.assertEqual(logic.segmentNames(segmentationNode), ["mine"])
        logic.applyDraft(localization, segmentationNode, volumeNode)

        path = logic.exportSegmentation(segmentationNode)
        reply = workflow.save_review(client, prepared.image_id, path, True, localization)
        self.assertEqual(reply.get("image"), prepared.image_id)
        workflow.save_review(client, prepared.image_id, path, False, localization)
        self.delayDisplay("Saved final label and draft on the server")
