"""Stand-in for ``slicer.util`` (Base/Python/slicer/util.py at v5.8.1; line numbers of that file).

Only the functions the AFLoc module (and Slicer's own ScriptedLoadableModule) call exist, with
Slicer's exact signatures, mutable default arguments included: ``exportNode``'s shared default
``properties`` dict keeps the first call's ``fileFormat`` for every later call that passes none,
exactly as l.1184-1201 do, so forgetting ``{}`` fails here as it does in Slicer.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import qt
import vtk

import slicer

_MAIN_WINDOW = qt.QMainWindow()


# l.237
def mainWindow():
    return _MAIN_WINDOW


# l.274 (simplified: name filter only)
def findChildren(widget=None, name="", text="", title="", className=""):
    children = widget.findChildren()
    return [c for c in children if not name or c.objectName == name]


# l.343
def loadUI(path):
    qfile = qt.QFile(path)
    if not qfile.exists():
        raise RuntimeError("Could not load UI file: file not found " + str(path) + "\n\n")
    qfile.open(qt.QFile.ReadOnly)
    widget = qt.QUiLoader().load(qfile)
    if not widget:
        raise RuntimeError("Could not load UI file: " + str(path) + "\n\n")
    return widget


# l.377
def childWidgetVariables(widget):
    ui = type("", (), {})()
    for childWidget in findChildren(widget):
        if childWidget.objectName:
            setattr(ui, childWidget.objectName, childWidget)
    return ui


# l.527
def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                         foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
    def _nodeID(nodeOrID):
        return nodeOrID.GetID() if isinstance(nodeOrID, slicer.vtkMRMLNode) else nodeOrID

    num = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(num):
        sliceViewer = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if background != "keep-current":
            sliceViewer.SetBackgroundVolumeID(_nodeID(background))
        if foreground != "keep-current":
            sliceViewer.SetForegroundVolumeID(_nodeID(foreground))
        if foregroundOpacity is not None:
            sliceViewer.SetForegroundOpacity(foregroundOpacity)
        if label != "keep-current":
            sliceViewer.SetLabelVolumeID(_nodeID(label))
        if labelOpacity is not None:
            sliceViewer.SetLabelOpacity(labelOpacity)


# l.694 (segmentation files only: what the module loads)
def loadNodeFromFile(filename, filetype=None, properties={}, returnNode=False):
    properties["fileName"] = str(filename)
    if filetype != "SegmentationFile":
        raise RuntimeError(f"stand-in: loading file type {filetype!r} is not modelled")
    try:
        node = _read_seg_nrrd(str(filename), properties.get("name"))
    except Exception as exc:  # Slicer's reader reports failures through userMessages
        if returnNode:
            return False, None
        raise RuntimeError(f"Failed to load node from file: {filename}\n{exc}") from None
    return (True, node) if returnNode else node


# l.928
def loadSegmentation(filename, properties={}, returnNode=False):
    return loadNodeFromFile(filename, "SegmentationFile", properties, returnNode)


# l.1184: the shared mutable default is Slicer's, kept on purpose (see the module docstring).
def exportNode(node, filename, properties={}, world=False):
    if "fileFormat" not in properties:
        currentExtension = _known_extension(filename)
        foundFileFormat = None
        for fileFormat in _WRITER_FORMATS.get(_writer_kind(node), ()):
            if fileFormat.split("(")[-1].rstrip(")") == currentExtension:
                foundFileFormat = fileFormat
                break
        if not foundFileFormat:
            raise ValueError(f"Failed to export {node.GetID()} - no known file format was found for filename {filename}")
        properties["fileFormat"] = foundFileFormat
    success = _export(node, str(filename), properties["fileFormat"])
    if not success:
        logging.error(f"Failed to export node to file: {filename}")
    return success


_WRITER_FORMATS = {
    "volume": ("NRRD (.nrrd)", "NIfTI (.nii.gz)", "NIfTI (.nii)"),
    "segmentation": ("Segmentation (.seg.nrrd)", "NRRD (.nrrd)"),
}


def _writer_kind(node):
    if isinstance(node, slicer.vtkMRMLSegmentationNode):
        return "segmentation"
    if isinstance(node, slicer.vtkMRMLVolumeNode):
        return "volume"
    return ""


def _known_extension(filename):
    lower = str(filename).lower()
    for extension in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd"):
        if lower.endswith(extension):
            return extension
    return os.path.splitext(lower)[1]


def _export(node, filename, fileFormat):
    kind = _writer_kind(node)
    if fileFormat not in _WRITER_FORMATS.get(kind, ()):
        return False  # qSlicerCoreIOManager finds no writer of that format for this node
    try:
        if kind == "segmentation":
            _write_seg_nrrd(node, filename)
        else:
            _write_volume(node, filename)
    except Exception as exc:  # noqa: BLE001 - Slicer logs writer errors and returns False
        logging.error(f"stand-in writer failed: {exc}")
        return False
    return True


# l.1388
def modulePath(moduleName):
    module = slicer.app.moduleManager().module(moduleName)
    if module is None:
        raise RuntimeError(f"Module not found: {moduleName}")
    return module.path


# l.1618
def getNodesByClass(className, scene=None):
    scene = slicer.mrmlScene if scene is None else scene
    return [n for n in scene._all() if n.IsA(className)]


# l.1763
def arrayFromVolume(volumeNode):
    scalarTypes = ["vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode"]
    vectorTypes = ["vtkMRMLVectorVolumeNode", "vtkMRMLMultiVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode"]
    if volumeNode.GetClassName() not in scalarTypes + vectorTypes:
        raise RuntimeError("Unsupported volume type: " + volumeNode.GetClassName())
    return volumeNode._voxels


# l.1976
def arrayFromVTKMatrix(vmatrix):
    if not isinstance(vmatrix, vtk.vtkMatrix4x4):
        raise RuntimeError("Input must be vtk.vtkMatrix3x3 or vtk.vtkMatrix4x4")
    return np.array([[vmatrix.GetElement(i, j) for j in range(4)] for i in range(4)])


# l.2000
def vtkMatrixFromArray(narray):
    if narray.shape != (4, 4):
        raise RuntimeError("Unsupported numpy array shape: " + str(narray.shape) + " expected (4,4)")
    vmatrix = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            vmatrix.SetElement(i, j, narray[i, j])
    return vmatrix


# l.2153
def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode=None):
    if not referenceVolumeNode:
        referenceVolumeNode = segmentationNode.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        if not referenceVolumeNode:
            raise RuntimeError("No reference volume is found in the input segmentationNode, therefore a valid "
                               "referenceVolumeNode input is required.")
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise RuntimeError("Export of segment failed.")
    shape = referenceVolumeNode._voxels.shape[:3]
    if segment._mask is None:
        return np.zeros(shape, np.uint8)
    return _resample(segment._mask, segment._ijkToRas, shape, referenceVolumeNode._ijkToRas).astype(np.uint8)


# l.2195
def updateSegmentBinaryLabelmapFromArray(narray, segmentationNode, segmentId, referenceVolumeNode=None):
    if not referenceVolumeNode:
        referenceVolumeNode = segmentationNode.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        if not referenceVolumeNode:
            raise RuntimeError("No reference volume is found in the input segmentationNode, therefore a valid "
                               "referenceVolumeNode input is required.")
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None or np.asarray(narray).shape != referenceVolumeNode._voxels.shape[:3]:
        raise RuntimeError("Importing of segment failed.")
    segment._mask = np.asarray(narray) > 0
    segment._ijkToRas = referenceVolumeNode._ijkToRas.copy()
    segmentationNode.Modified()


# l.2358
def updateVolumeFromArray(volumeNode, narray):
    narray = np.asarray(narray)
    if narray.ndim == 1:
        narray = narray[np.newaxis, np.newaxis, :]
    elif narray.ndim == 2:
        narray = narray[np.newaxis]
    elif narray.ndim not in (3, 4):
        raise RuntimeError("Unsupported numpy array shape: " + str(narray.shape))
    if narray.dtype == np.int64 and os.name == "nt":
        raise RuntimeError("Unsupported numpy array type: long long")
    volumeNode._voxels = np.array(narray, copy=True)
    volumeNode.StorableModified()
    volumeNode.Modified()


# l.2431
def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    if name is None:
        name = ""
    if nodeClassName is None:
        nodeClassName = "vtkMRMLScalarVolumeNode"
    volumeNode = slicer.mrmlScene.AddNewNodeByClass(nodeClassName, name)
    if ijkToRAS is not None:
        if not isinstance(ijkToRAS, vtk.vtkMatrix4x4):
            ijkToRAS = vtkMatrixFromArray(ijkToRAS)
        volumeNode.SetIJKToRASMatrix(ijkToRAS)
    updateVolumeFromArray(volumeNode, narray)
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


# l.2784 (verbatim behaviour)
class VTKObservationMixin:
    def __init__(self):
        super().__init__()
        self.__observations = {}

    @property
    def Observations(self):
        return [
            (obj, event, method, group, tag, priority)
            for obj, events in self.__observations.items()
            for event, methods in events.items()
            for method, (group, tag, priority) in methods.items()
        ]

    def removeObservers(self, method=None):
        if method is None:
            for obj, _, _, _, tag, _ in self.Observations:
                obj.RemoveObserver(tag)
            self.__observations.clear()
        else:
            for obj, events in self.__observations.items():
                for e, methods in events.items():
                    if method in methods:
                        g, t, p = methods.pop(method)
                        obj.RemoveObserver(t)

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        events = self.__observations.setdefault(obj, {})
        methods = events.setdefault(event, {})
        if method in methods:
            return
        tag = obj.AddObserver(event, method, priority)
        methods[method] = group, tag, priority

    def removeObserver(self, obj, event, method):
        try:
            group, tag, priority = self.__observations[obj][event].pop(method)
            obj.RemoveObserver(tag)
        except KeyError:
            pass


# l.2979
def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    standardButtons = standardButtons if standardButtons else qt.QMessageBox.Ok
    _messageDisplay(logging.ERROR, text, None, parent=parent, windowTitle=windowTitle, mainWindowNeeded=True,
                    icon=qt.QMessageBox.Critical, standardButtons=standardButtons, **kwargs)


# l.3007
def confirmYesNoDisplay(text, windowTitle=None, parent=None, **kwargs):
    if not windowTitle:
        windowTitle = slicer.app.applicationName + " confirmation"
    result = _messageDisplay(logging.INFO, text, True, parent=parent, windowTitle=windowTitle,
                             icon=qt.QMessageBox.Question, standardButtons=qt.QMessageBox.Yes | qt.QMessageBox.No,
                             **kwargs)
    return result == qt.QMessageBox.Yes


# l.3035. One difference: a box with only an OK button (errorDisplay) is recorded, not modal, so a
# test need not answer every error; Yes/No boxes are modal and take the answer the test queued.
def _messageDisplay(logLevel, text, testingReturnValue, mainWindowNeeded=False, parent=None, windowTitle=None,
                    **kwargs):
    logging.log(logLevel, text)
    if slicer.app.testingEnabled():
        return testingReturnValue
    if mainWindowNeeded and mainWindow() is None:
        return None
    if kwargs.get("standardButtons") == qt.QMessageBox.Ok:
        # An information/error box: recorded, not modal for the test (it has one button).
        qt.QMessageBox._shown.append({"title": windowTitle, "text": text, "answer": qt.QMessageBox.Ok})
        return qt.QMessageBox.Ok
    box = qt.QMessageBox(parent or mainWindow())
    box.setWindowTitle(windowTitle or "")
    box.setText(text)
    box.setStandardButtons(kwargs.get("standardButtons", qt.QMessageBox.Ok))
    return box.exec_()


# l.3323
def toBool(value):
    try:
        return bool(int(value))
    except (ValueError, TypeError):
        return value.lower() in ["true"] if isinstance(value, str) else bool(value)


# l.3351
def settingsValue(key, default, converter=lambda v: v, settings=None):
    settings = qt.QSettings() if settings is None else settings
    return converter(settings.value(key)) if settings.contains(key) else default


# ---------------------------------------------------------------------- file readers and writers
def _resample(mask, sourceIjkToRas, shape, targetIjkToRas):
    """Nearest-neighbour resampling of ``mask`` [K, J, I] onto a target grid [K, J, I]."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    source = np.rint(np.linalg.inv(sourceIjkToRas) @ targetIjkToRas @ ijk).astype(np.int64)
    si, sj, sk = source[0], source[1], source[2]
    inside = (si >= 0) & (si < mask.shape[2]) & (sj >= 0) & (sj < mask.shape[1]) & (sk >= 0) & (sk < mask.shape[0])
    out = np.zeros(i.size, bool)
    out[inside] = mask[sk[inside], sj[inside], si[inside]]
    return out.reshape(shape)


_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_seg_nrrd(filename, name=None):
    """A ``.seg.nrrd`` as Slicer's segmentation reader loads it (pynrrd does the file format)."""
    import nrrd

    data, header = nrrd.read(filename, index_order="F")
    if "Segmentation_MasterRepresentation" not in header and "Segment0_ID" not in header:
        raise ValueError("not a segmentation file (no Segment fields)")
    directions = np.asarray(header["space directions"], dtype=float)
    spatial = [row for row in directions if not np.all(np.isnan(row))]
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = np.array(spatial).T
    ijkToLps[:3, 3] = np.asarray(header["space origin"], dtype=float)
    layers = data if data.ndim == 4 else data[np.newaxis]
    node = slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", name or os.path.basename(filename).split(".")[0])
    node.CreateDefaultDisplayNodes()
    index = 0
    while f"Segment{index}_ID" in header:
        prefix = f"Segment{index}_"
        segment = slicer.vtkSegment()
        segment.SetName(header[prefix + "Name"])
        segment.SetColor(*[float(c) for c in header[prefix + "Color"].split()])
        for item in header.get(prefix + "Tags", "").split("|"):
            key, sep, value = item.partition(":")
            if sep:
                segment.SetTag(key, value)
        layer = int(header.get(prefix + "Layer", 0))
        value = int(header.get(prefix + "LabelValue", 1))
        mask_ijk = layers[layer] == value  # [I, J, K]
        segment._mask = np.ascontiguousarray(np.transpose(mask_ijk, (2, 1, 0)))
        segment._ijkToRas = _RAS_LPS @ ijkToLps
        if not node.GetSegmentation().AddSegment(segment, header[prefix + "ID"]):
            raise ValueError(f"duplicate segment id {header[prefix + 'ID']}")
        index += 1
    return node


def _write_seg_nrrd(node, filename):
    """Write every segment as its own layer ([L, I, J, K], Slicer's layout for overlapping segments)."""
    import nrrd

    segmentation = node.GetSegmentation()
    reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
    if reference is None:
        raise ValueError("segmentation has no reference geometry")
    shape = reference._voxels.shape[:3]
    ijkToRas = reference._ijkToRas
    layers, header = [], {"Segmentation_MasterRepresentation": "Binary labelmap",
                          "Segmentation_ContainedRepresentationNames": "Binary labelmap|"}
    for index, segmentId in enumerate(segmentation.GetSegmentIDs()):
        segment = segmentation.GetSegment(segmentId)
        mask = np.zeros(shape, bool) if segment._mask is None else _resample(
            segment._mask, segment._ijkToRas, shape, ijkToRas)
        layers.append(np.transpose(mask, (2, 1, 0)).astype(np.uint8))
        prefix = f"Segment{index}_"
        header.update({
            prefix + "ID": segmentId, prefix + "Name": segment.GetName(), prefix + "LabelValue": "1",
            prefix + "Layer": str(index), prefix + "Color": " ".join(str(c) for c in segment.GetColor()),
            prefix + "Tags": "".join(f"{k}:{v}|" for k, v in segment._tags.items()),
            prefix + "Extent": "0 -1 0 -1 0 -1", prefix + "NameAutoGenerated": "0", prefix + "ColorAutoGenerated": "0",
        })
    ijkToLps = _RAS_LPS @ ijkToRas
    voxels = np.stack(layers) if layers else np.zeros((1,) + tuple(reversed(shape)), np.uint8)
    header.update({
        "space": "left-posterior-superior",
        "space directions": np.vstack([[np.nan] * 3, ijkToLps[:3, :3].T]),
        "space origin": ijkToLps[:3, 3],
        "kinds": ["list", "domain", "domain", "domain"],
        "encoding": "gzip",
    })
    nrrd.write(filename, voxels, header, index_order="F")


def _write_volume(node, filename):
    """NIfTI via nibabel (RAS affine, voxels [I, J, K]) or NRRD via pynrrd, as ITK's writers lay them out."""
    voxels = node._voxels
    if voxels.ndim == 4:
        raise ValueError("stand-in: vector volumes are written by the module itself, not by exportNode")
    data = np.ascontiguousarray(np.transpose(voxels, (2, 1, 0)))
    if filename.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        image = nibabel.Nifti1Image(data, node._ijkToRas)
        image.set_qform(node._ijkToRas, code=1)
        image.set_sform(node._ijkToRas, code=1)
        nibabel.save(image, filename)
    else:
        import nrrd

        ijkToLps = _RAS_LPS @ node._ijkToRas
        nrrd.write(filename, data, {"space": "left-posterior-superior", "space directions": ijkToLps[:3, :3].T,
                                    "space origin": ijkToLps[:3, 3]}, index_order="F")
