"""Stand-in for the ``slicer`` names the AFLoc module uses (Slicer 5.8.1; sources cited per class).

Scene and nodes keep real data: a volume node holds its voxels (numpy, ``[K, J, I]`` or
``[K, J, I, C]`` as ``slicer.util.arrayFromVolume`` returns them) and IJK-to-RAS matrix; a segment
holds a binary mask with its own IJK-to-RAS geometry, resampled (nearest neighbour) onto whichever
reference volume a caller names, as Slicer's labelmap export does.
"""

from __future__ import annotations

import random
import string

import numpy as np
import qt
import vtk

# ---------------------------------------------------------------------- MRML nodes
class vtkMRMLNode(vtk.vtkObject):
    """Libs/MRML/Core/vtkMRMLNode.h: ID, name, attributes, scene."""

    __slots__ = ("_id", "_name", "_attributes", "_scene", "_hideFromEditors")

    def __init__(self):
        super().__init__()
        self._id = None
        self._name = ""
        self._attributes = {}
        self._scene = None
        self._hideFromEditors = False

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = str(name)
        self.Modified()

    def GetAttribute(self, name):
        return self._attributes.get(name)  # None when unset, as the wrapped const char* is

    def SetAttribute(self, name, value):
        self._attributes[name] = str(value)

    def GetScene(self):
        return self._scene

    def GetHideFromEditors(self):
        return self._hideFromEditors

    def SetHideFromEditors(self, hide):
        self._hideFromEditors = bool(hide)


class vtkMRMLDisplayNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLDisplayNode.h: colour node, visibility, opacity."""

    __slots__ = ("_colorNodeID", "_visibility", "_opacity")

    def __init__(self):
        super().__init__()
        self._colorNodeID = None
        self._visibility = True
        self._opacity = 1.0

    def SetAndObserveColorNodeID(self, colorNodeID):
        self._colorNodeID = colorNodeID

    def GetColorNodeID(self):
        return self._colorNodeID

    def SetVisibility(self, visible):
        self._visibility = bool(visible)

    def GetVisibility(self):
        return self._visibility

    def SetOpacity(self, opacity):
        self._opacity = float(opacity)

    def GetOpacity(self):
        return self._opacity


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLDisplayNode):
    """Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.h: window/level and threshold."""

    __slots__ = ("_autoWindowLevel", "_windowLevelMinMax", "_applyThreshold", "_lower", "_upper")

    def __init__(self):
        super().__init__()
        self._autoWindowLevel = True
        self._windowLevelMinMax = (0.0, 0.0)
        self._applyThreshold = False
        self._lower = 0.0
        self._upper = 0.0

    def AutoWindowLevelOff(self):
        self._autoWindowLevel = False

    def AutoWindowLevelOn(self):
        self._autoWindowLevel = True

    def GetAutoWindowLevel(self):
        return self._autoWindowLevel

    def SetWindowLevelMinMax(self, minimum, maximum):
        self._windowLevelMinMax = (float(minimum), float(maximum))

    def GetWindowLevelMin(self):
        return self._windowLevelMinMax[0]

    def GetWindowLevelMax(self):
        return self._windowLevelMinMax[1]

    def ApplyThresholdOn(self):
        self._applyThreshold = True

    def GetApplyThreshold(self):
        return self._applyThreshold

    def SetLowerThreshold(self, value):
        self._lower = float(value)

    def SetUpperThreshold(self, value):
        self._upper = float(value)

    def GetLowerThreshold(self):
        return self._lower

    def GetUpperThreshold(self):
        return self._upper


class vtkMRMLVectorVolumeDisplayNode(vtkMRMLScalarVolumeDisplayNode):
    __slots__ = ()


class vtkMRMLLabelMapVolumeDisplayNode(vtkMRMLDisplayNode):
    __slots__ = ()


class vtkMRMLSegmentationDisplayNode(vtkMRMLDisplayNode):
    """Libs/MRML/Core/vtkMRMLSegmentationDisplayNode.h (display only; nothing the module reads)."""

    __slots__ = ()


class vtkMRMLDisplayableNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLDisplayableNode.h: ``GetDisplayNode()``, ``CreateDefaultDisplayNodes()``."""

    __slots__ = ("_displayNodeID",)
    _DISPLAY_CLASS = "vtkMRMLDisplayNode"

    def __init__(self):
        super().__init__()
        self._displayNodeID = None

    def GetDisplayNode(self):
        return self._scene.GetNodeByID(self._displayNodeID) if self._scene and self._displayNodeID else None

    def CreateDefaultDisplayNodes(self):
        if self.GetDisplayNode() is None and self._scene is not None:
            self._displayNodeID = self._scene.AddNewNodeByClass(self._DISPLAY_CLASS).GetID()


class vtkMRMLVolumeNode(vtkMRMLDisplayableNode):
    """Libs/MRML/Core/vtkMRMLVolumeNode.h: IJK-to-RAS matrix and image data (here: a numpy array)."""

    __slots__ = ("_voxels", "_ijkToRas")

    def __init__(self):
        super().__init__()
        self._voxels = None
        self._ijkToRas = np.eye(4)

    def GetIJKToRASMatrix(self, mat):
        if not isinstance(mat, vtk.vtkMatrix4x4):
            raise TypeError("GetIJKToRASMatrix argument 1: expected vtkMatrix4x4")
        for i in range(4):
            for j in range(4):
                mat.SetElement(i, j, self._ijkToRas[i, j])

    def SetIJKToRASMatrix(self, mat):
        if not isinstance(mat, vtk.vtkMatrix4x4):
            raise TypeError("SetIJKToRASMatrix argument 1: expected vtkMatrix4x4")
        self._ijkToRas = np.array([[mat.GetElement(i, j) for j in range(4)] for i in range(4)])
        self.Modified()

    def StorableModified(self):
        pass

    def GetImageData(self):
        raise AttributeError("stand-in: use slicer.util.arrayFromVolume (vtkImageData is not modelled)")


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    __slots__ = ()
    _DISPLAY_CLASS = "vtkMRMLScalarVolumeDisplayNode"


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    __slots__ = ()
    _DISPLAY_CLASS = "vtkMRMLLabelMapVolumeDisplayNode"


class vtkMRMLVectorVolumeNode(vtkMRMLScalarVolumeNode):
    """Libs/MRML/Core/vtkMRMLVectorVolumeNode.h: derives from vtkMRMLScalarVolumeNode."""

    __slots__ = ()
    _DISPLAY_CLASS = "vtkMRMLVectorVolumeDisplayNode"


class vtkMRMLSliceCompositeNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLSliceCompositeNode.h: layer volume ids and opacities."""

    __slots__ = ("_background", "_foreground", "_label", "_foregroundOpacity", "_labelOpacity")

    def __init__(self):
        super().__init__()
        self._background = self._foreground = self._label = None
        self._foregroundOpacity = 0.0
        self._labelOpacity = 1.0

    def SetBackgroundVolumeID(self, volumeID):
        self._background = volumeID

    def GetBackgroundVolumeID(self):
        return self._background

    def SetForegroundVolumeID(self, volumeID):
        self._foreground = volumeID

    def GetForegroundVolumeID(self):
        return self._foreground

    def SetLabelVolumeID(self, volumeID):
        self._label = volumeID

    def SetForegroundOpacity(self, opacity):
        self._foregroundOpacity = float(opacity)

    def GetForegroundOpacity(self):
        return self._foregroundOpacity

    def SetLabelOpacity(self, opacity):
        self._labelOpacity = float(opacity)


class vtkMRMLColorTableNode(vtkMRMLNode):
    """Libs/MRML/Core/vtkMRMLColorTableNode.h (ids only)."""

    __slots__ = ()


# ---------------------------------------------------------------------- segmentation core
class vtkSegment(vtk.vtkObject):
    """Libs/vtkSegmentationCore/vtkSegment.h (v5.8.1).

    Python-visible API used: ``GetName``/``SetName`` (l.115-116), ``GetColor``/``SetColor``
    (l.123-124), ``SetTag(tag, value)`` (l.94/96, string or int), ``GetTag(tag, value)`` with a
    ``std::string&`` out-parameter (l.105: Python passes ``vtk.mutable("")``; one argument is a
    TypeError), ``HasTag`` (l.107), ``RemoveTag`` (l.99), ``DeepCopy`` and the static
    ``GetTerminologyEntryTagName()`` (l.52, "TerminologyEntry").
    """

    __slots__ = ("_name", "_color", "_tags", "_mask", "_ijkToRas", "_labelValue", "_nameAutoGenerated")

    def __init__(self):
        super().__init__()
        self._name = ""
        self._color = (0.5, 0.5, 0.5)
        self._tags = {}
        self._mask = None  # bool [K, J, I]
        self._ijkToRas = np.eye(4)
        self._labelValue = 1
        self._nameAutoGenerated = True

    @staticmethod
    def GetTerminologyEntryTagName():
        return "TerminologyEntry"

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = str(name)

    def GetColor(self):
        return tuple(self._color)

    def SetColor(self, *color):
        if len(color) == 1:
            color = tuple(color[0])
        if len(color) != 3:
            raise TypeError("SetColor takes 3 doubles or a sequence of 3")
        self._color = tuple(float(c) for c in color)

    def GetLabelValue(self):
        return self._labelValue

    def SetLabelValue(self, value):
        self._labelValue = int(value)

    def SetTag(self, tag, value):
        if not isinstance(tag, str) or not isinstance(value, (str, int)) or isinstance(value, bool):
            raise TypeError("SetTag(std::string, std::string) or SetTag(std::string, int)")
        self._tags[tag] = str(value)

    def GetTag(self, tag, value):
        if not isinstance(value, vtk.mutable):
            raise TypeError("GetTag argument 2: a std::string& out-parameter needs vtk.mutable")
        if tag in self._tags:
            value.set(self._tags[tag])
            return True
        return False

    def HasTag(self, tag):
        return tag in self._tags

    def RemoveTag(self, tag):
        self._tags.pop(tag, None)

    def DeepCopy(self, source):
        if not isinstance(source, vtkSegment):
            raise TypeError("DeepCopy argument 1: expected vtkSegment")
        self._name = source._name
        self._color = source._color
        self._tags = dict(source._tags)
        self._mask = None if source._mask is None else source._mask.copy()
        self._ijkToRas = source._ijkToRas.copy()
        self._labelValue = source._labelValue
        self._nameAutoGenerated = source._nameAutoGenerated


class vtkSegmentation(vtk.vtkObject):
    """Libs/vtkSegmentationCore/vtkSegmentation.h (v5.8.1): an ordered id -> segment map.

    Used: ``AddSegment(segment, segmentId="", insertBeforeSegmentId="")`` -> bool (l.210; an id
    already in use silently replaces that segment, as the .cxx does),
    ``GenerateUniqueSegmentID(id="")`` (l.219; ``id_1``, ``id_2``... on a clash, as the .cxx does),
    ``RemoveSegment(segmentId)`` (l.223), ``GetSegment(segmentId)`` (l.234), ``GetSegmentIDs()``
    (l.243), ``GetNumberOfSegments()`` (l.246), ``GetNthSegment(index)`` / ``GetNthSegmentID(index)``
    (l.249/252), ``GetSegmentIdBySegmentName(name)`` (l.277),
    ``CopySegmentFromSegmentation(fromSegmentation, segmentId, removeFromSource=False)`` (l.294;
    makes a unique id on a clash, without telling which), ``AddEmptySegment(segmentId="",
    segmentName="", color=None)`` (l.474), ``DeepCopy(aSegmentation)`` (l.148). There is no
    ``ChangeSegmentId`` in any Slicer version (5.6.2, 5.8.1, 5.10.0).
    """

    __slots__ = ("_segments", "_autogeneratorIndex")

    def __init__(self):
        super().__init__()
        self._segments = {}
        self._autogeneratorIndex = 0

    def GenerateUniqueSegmentID(self, id=""):
        if id and id not in self._segments:
            return id
        if not id:
            while True:
                candidate = "".join(random.choice(string.ascii_letters) for _ in range(10))
                if candidate not in self._segments:
                    return candidate
        while True:
            self._autogeneratorIndex += 1
            candidate = f"{id}_{self._autogeneratorIndex}"
            if candidate not in self._segments:
                return candidate

    def AddSegment(self, segment, segmentId="", insertBeforeSegmentId=""):
        if not isinstance(segment, vtkSegment):
            return False
        segmentId = segmentId or self.GenerateUniqueSegmentID("")
        if segmentId in self._segments:
            # vtkSegmentation.cxx AddSegment: `this->Segments[key] = segment;` silently replaces the
            # segment already stored under that id (no check, no error): the caller must make ids unique.
            self._segments[segmentId] = segment
            self.Modified()
            return True
        items = list(self._segments.items())
        position = len(items)
        if insertBeforeSegmentId:
            keys = [k for k, _ in items]
            if insertBeforeSegmentId in keys:
                position = keys.index(insertBeforeSegmentId)
        items.insert(position, (segmentId, segment))
        self._segments = dict(items)
        self.Modified()
        return True

    def RemoveSegment(self, segmentId):
        if isinstance(segmentId, vtkSegment):
            segmentId = next((k for k, v in self._segments.items() if v is segmentId), None)
        self._segments.pop(segmentId, None)
        self.Modified()

    def GetSegment(self, segmentId):
        return self._segments.get(segmentId)

    def GetSegmentIDs(self):
        return tuple(self._segments)

    def GetNumberOfSegments(self):
        return len(self._segments)

    def GetNthSegment(self, index):
        keys = list(self._segments)
        return self._segments[keys[index]] if 0 <= index < len(keys) else None

    def GetNthSegmentID(self, index):
        keys = list(self._segments)
        return keys[index] if 0 <= index < len(keys) else ""

    def GetSegmentIdBySegmentName(self, name):
        for key, segment in self._segments.items():
            if segment.GetName().lower() == name.lower():
                return key
        return ""

    def CopySegmentFromSegmentation(self, fromSegmentation, segmentId, removeFromSource=False):
        if fromSegmentation is None or not segmentId:
            return False
        source = fromSegmentation.GetSegment(segmentId)
        if source is None:
            return False
        targetId = self.GenerateUniqueSegmentID(segmentId)
        copy = vtkSegment()
        copy.DeepCopy(source)
        if not self.AddSegment(copy, targetId):
            return False
        if removeFromSource:
            fromSegmentation.RemoveSegment(segmentId)
        return True

    def AddEmptySegment(self, segmentId="", segmentName="", color=None):
        segment = vtkSegment()
        if color is not None:
            segment.SetColor(color)
        segment.SetName(segmentName or self._uniqueName("Segment"))
        segmentId = self.GenerateUniqueSegmentID(segmentId)
        return segmentId if self.AddSegment(segment, segmentId) else ""

    def _uniqueName(self, base):
        names = {s.GetName() for s in self._segments.values()}
        n = 1
        while f"{base}_{n}" in names:
            n += 1
        return f"{base}_{n}"

    def DeepCopy(self, aSegmentation):
        if not isinstance(aSegmentation, vtkSegmentation):
            raise TypeError("DeepCopy argument 1: expected vtkSegmentation")
        self._segments = {}
        for key, segment in aSegmentation._segments.items():
            copy = vtkSegment()
            copy.DeepCopy(segment)
            self._segments[key] = copy
        self.Modified()


class vtkMRMLSegmentationNode(vtkMRMLDisplayableNode):
    """Libs/MRML/Core/vtkMRMLSegmentationNode.h: ``GetSegmentation()``,
    ``SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)``,
    ``GetReferenceImageGeometryReferenceRole()``, ``GetNodeReference(role)``.
    """

    __slots__ = ("_segmentation", "_referenceVolumeID")
    _DISPLAY_CLASS = "vtkMRMLSegmentationDisplayNode"

    def __init__(self):
        super().__init__()
        self._segmentation = vtkSegmentation()
        self._referenceVolumeID = None

    def GetSegmentation(self):
        return self._segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode):
        self._referenceVolumeID = volumeNode.GetID() if volumeNode is not None else None

    @staticmethod
    def GetReferenceImageGeometryReferenceRole():
        return "referenceImageGeometryRef"

    def GetNodeReference(self, referenceRole):
        if referenceRole == "referenceImageGeometryRef" and self._scene and self._referenceVolumeID:
            return self._scene.GetNodeByID(self._referenceVolumeID)
        return None


class vtkSlicerSegmentationsModuleLogic:
    """Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h (v5.8.1, l.394-417):
    ``SegmentStatus`` enum, static ``GetSegmentStatus(segment)`` / ``SetSegmentStatus(segment, status)``
    stored as the segment tag ``Segmentation.Status`` (machine-readable strings from the .cxx).
    """

    NotStarted, InProgress, Completed, Flagged, LastStatus = range(5)
    _NAMES = ("notstarted", "inprogress", "completed", "flagged")

    def __init__(self):
        raise TypeError("stand-in: only the static methods of vtkSlicerSegmentationsModuleLogic are modelled")

    @staticmethod
    def GetSegmentStatusTagName():
        return "Segmentation.Status"

    @staticmethod
    def SetSegmentStatus(segment, status):
        if not isinstance(segment, vtkSegment) or not isinstance(status, int):
            raise TypeError("SetSegmentStatus(vtkSegment, int)")
        if status == vtkSlicerSegmentationsModuleLogic.NotStarted:
            segment.RemoveTag("Segmentation.Status")
        else:
            segment.SetTag("Segmentation.Status", vtkSlicerSegmentationsModuleLogic._NAMES[status])

    @staticmethod
    def GetSegmentStatus(segment):
        value = vtk.mutable("")
        if not segment.GetTag("Segmentation.Status", value):
            return vtkSlicerSegmentationsModuleLogic.NotStarted
        return vtkSlicerSegmentationsModuleLogic._NAMES.index(str(value))


# ---------------------------------------------------------------------- the scene
_NODE_CLASSES = {
    cls.__name__: cls
    for cls in (
        vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLVectorVolumeNode,
        vtkMRMLScalarVolumeDisplayNode, vtkMRMLVectorVolumeDisplayNode, vtkMRMLLabelMapVolumeDisplayNode,
        vtkMRMLSegmentationNode, vtkMRMLSegmentationDisplayNode, vtkMRMLSliceCompositeNode, vtkMRMLColorTableNode,
    )
}


class vtkMRMLScene(vtk.vtkObject):
    """Libs/MRML/Core/vtkMRMLScene.h (v5.8.1).

    Used: ``AddNewNodeByClass(className, nodeBaseName="")`` (l.218), ``RemoveNode(n)`` (l.239),
    ``GetFirstNodeByName(name)`` (l.275), ``GetNodeByID(id)``, ``GetNthNodeByClass(n, className)``
    (l.307), ``GetNumberOfNodesByClass(className)`` (l.312), ``Clear(removeSingletons=0)`` (l.107:
    fires StartCloseEvent, removes the nodes, fires EndCloseEvent), ``GetUndoFlag()`` (l.378),
    ``IsClosing()``; events ``NodeAddedEvent``, ``NodeRemovedEvent``, ``StartCloseEvent``,
    ``EndCloseEvent`` (l.671-697: StateEvent|StartEvent|CloseState, CloseState = 0x0002|0x0001).
    """

    __slots__ = ("_nodes", "_counter", "_closing")

    NodeAddedEvent = 0x2001
    NodeRemovedEvent = 0x2003
    StartCloseEvent = 0x2000 | 0x0100 | 0x0003
    EndCloseEvent = 0x2000 | 0x0200 | 0x0003

    def __init__(self):
        super().__init__()
        self._nodes = {}
        self._counter = {}
        self._closing = False
        self._addSingletons()

    def _addSingletons(self):
        for view in ("Red", "Yellow", "Green"):
            node = vtkMRMLSliceCompositeNode()
            self._add(node, f"vtkMRMLSliceCompositeNode{view}", f"SliceComposite{view}")
        for colorId in ("vtkMRMLColorTableNodeRainbow", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
                        "vtkMRMLColorTableNodeGrey"):
            self._add(vtkMRMLColorTableNode(), colorId, colorId)

    def _add(self, node, nodeId, name):
        node._id = nodeId
        node._name = name
        node._scene = self
        self._nodes[nodeId] = node
        self.InvokeEvent(self.NodeAddedEvent)

    def AddNewNodeByClass(self, className, nodeBaseName=""):
        if className not in _NODE_CLASSES:
            raise AttributeError(f"stand-in: node class '{className}' is not modelled")
        node = _NODE_CLASSES[className]()
        count = self._counter.get(className, 0) + 1
        self._counter[className] = count
        nodeId = f"{className}{count}"
        name = nodeBaseName or className.replace("vtkMRML", "").replace("Node", "")
        taken = {n.GetName() for n in self._nodes.values()}
        if nodeBaseName and name in taken:
            n = 1
            while f"{nodeBaseName}_{n}" in taken:
                n += 1
            name = f"{nodeBaseName}_{n}"
        self._add(node, nodeId, name)
        return node

    def RemoveNode(self, n):
        if n is None or n.GetID() not in self._nodes:
            return
        if isinstance(n, vtkMRMLDisplayableNode) and n._displayNodeID in self._nodes:
            self.RemoveNode(self._nodes[n._displayNodeID])
        del self._nodes[n.GetID()]
        n._scene = None
        self.InvokeEvent(self.NodeRemovedEvent)

    def GetNodeByID(self, id):
        return self._nodes.get(id) if id else None

    def GetFirstNodeByName(self, name):
        return next((n for n in self._nodes.values() if n.GetName() == name), None)

    def GetFirstNodeByClass(self, className):
        return next((n for n in self._nodes.values() if n.IsA(className)), None)

    def GetNumberOfNodesByClass(self, className):
        return sum(1 for n in self._nodes.values() if n.IsA(className))

    def GetNthNodeByClass(self, n, className):
        nodes = [node for node in self._nodes.values() if node.IsA(className)]
        return nodes[n] if 0 <= n < len(nodes) else None

    def GetUndoFlag(self):
        return False

    def IsClosing(self):
        return self._closing

    def Clear(self, removeSingletons=0):
        self._closing = True
        self.InvokeEvent(self.StartCloseEvent)
        for node in list(self._nodes.values()):
            if removeSingletons or not isinstance(node, (vtkMRMLSliceCompositeNode, vtkMRMLColorTableNode)):
                if node.GetID() in self._nodes:
                    self.RemoveNode(node)
        if removeSingletons:
            self._addSingletons()
        for node in self._nodes.values():
            if isinstance(node, vtkMRMLSliceCompositeNode):
                node._background = node._foreground = node._label = None
        self._closing = False
        self.InvokeEvent(self.EndCloseEvent)

    def _all(self):
        return list(self._nodes.values())


mrmlScene = vtkMRMLScene()


# ---------------------------------------------------------------------- MRML widgets
class qMRMLWidget(qt.QWidget):
    """Libs/MRML/Widgets/qMRMLWidget.h: ``setMRMLScene(scene)`` emits ``mrmlSceneChanged(vtkMRMLScene*)``."""

    SIGNALS = ("mrmlSceneChanged(vtkMRMLScene*)",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self._emit("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qt.QWidget):
    """Libs/MRML/Widgets/qMRMLNodeComboBox.h: lists scene nodes of ``nodeTypes`` (subclasses only with
    ``showChildNodeTypes``); ``currentNode()``, ``setCurrentNode(node)`` (a node it does not list
    leaves it on no node), ``currentNodeChanged(vtkMRMLNode*)``. Without ``noneEnabled`` it selects
    the first listed node when it has none (QComboBox selects its first item).
    """

    PROPERTIES = {"nodeTypes": [], "showChildNodeTypes": True, "addEnabled": True, "removeEnabled": True,
                  "noneEnabled": False, "noneDisplay": "None", "renameEnabled": False, "editEnabled": False,
                  "showHidden": False, "selectNodeUponCreation": True}
    SIGNALS = ("currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)",
               "nodeAdded(vtkMRMLNode*)")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._currentID = None
        self._observerTags = []

    def _lists(self, node):
        if node is None or node.GetHideFromEditors() or node.GetName().startswith("__"):
            return False
        types = self._p["nodeTypes"]
        if self._p["showChildNodeTypes"]:
            return any(node.IsA(t) for t in types)
        return node.GetClassName() in types

    def nodes(self):
        return [n for n in self._scene._all() if self._lists(n)] if self._scene else []

    def setMRMLScene(self, scene):
        if self._scene is not None:
            for tag in self._observerTags:
                self._scene.RemoveObserver(tag)
        self._scene = scene
        self._observerTags = [
            scene.AddObserver(scene.NodeAddedEvent, self._sceneChanged),
            scene.AddObserver(scene.NodeRemovedEvent, self._sceneChanged),
        ]
        self._sceneChanged(scene, None)

    def _sceneChanged(self, caller, event):
        current = self.currentNode()
        if current is None and self._currentID is not None:
            self._setCurrentID(None)
        if self.currentNode() is None and not self._p["noneEnabled"]:
            listed = self.nodes()
            if listed:
                self._setCurrentID(listed[0].GetID())

    def currentNode(self):
        node = self._scene.GetNodeByID(self._currentID) if self._scene and self._currentID else None
        return node if self._lists(node) else None

    def currentNodeID(self):
        node = self.currentNode()
        return node.GetID() if node else ""

    def setCurrentNode(self, node):
        self._setCurrentID(node.GetID() if node is not None and self._lists(node) else None)

    def setCurrentNodeID(self, nodeID):
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if self._scene else None)

    def _setCurrentID(self, nodeID):
        if nodeID == self._currentID:
            return
        self._currentID = nodeID
        self._emit("currentNodeChanged(vtkMRMLNode*)", self.currentNode())
        self._emit("currentNodeChanged(bool)", self.currentNode() is not None)
        self._emit("currentNodeIDChanged(QString)", nodeID or "")


# ---------------------------------------------------------------------- application and modules
class _ModuleManager(qt.QObject):
    SIGNALS = ("moduleAboutToBeUnloaded(QString)", "moduleLoaded(QString)")

    def __init__(self):
        super().__init__()
        self._paths = {}

    def module(self, name):
        return _LoadedModule(self._paths[name]) if name in self._paths else None


class _LoadedModule:
    __slots__ = ("path",)

    def __init__(self, path):
        self.path = path


class qSlicerApplication(qt.QObject):
    """Base/QTGUI/qSlicerApplication.h: ``startupCompleted()`` (l.247), ``processEvents()``,
    ``testingEnabled()``, ``applicationName``, ``moduleManager()``."""

    PROPERTIES = {"applicationName": "3D Slicer"}
    SIGNALS = ("startupCompleted()", "aboutToQuit()")

    def __init__(self):
        super().__init__()
        self._moduleManager = _ModuleManager()
        self._testing = False

    def processEvents(self, *args):
        qt._process_events()

    def testingEnabled(self):
        return self._testing

    def moduleManager(self):
        return self._moduleManager


app = qSlicerApplication()


class _TerminologiesLogic:
    """Modules/Loadable/Terminologies/Logic/vtkSlicerTerminologiesModuleLogic.h (v5.8.1, l.82):
    ``std::string LoadTerminologyFromFile(std::string filePath)`` -> the context name, "" on failure.
    This stand-in parses the JSON and checks the fields Slicer's loader reads."""

    def __init__(self):
        self.loaded = {}

    def LoadTerminologyFromFile(self, filePath):
        import json

        try:
            with open(filePath, encoding="utf-8") as handle:
                data = json.load(handle)
            name = data["SegmentationCategoryTypeContextName"]
            categories = data["SegmentationCodes"]["Category"]
            assert all("CodeValue" in t for c in categories for t in c["Type"])
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return ""
        self.loaded[name] = filePath
        return name


class _ScriptedModuleHandle:
    """``slicer.modules.<name>``: ``logic()``."""

    __slots__ = ("_logic",)

    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


class _Modules:
    __slots__ = ("terminologies",)

    def __init__(self):
        self.terminologies = _ScriptedModuleHandle(_TerminologiesLogic())


modules = _Modules()


class ctkDICOMDatabase:
    """CTK's ``ctkDICOMDatabase.fileForInstance(sopInstanceUID)`` -> path, "" when unknown."""

    __slots__ = ("_files",)

    def __init__(self):
        self._files = {}

    def fileForInstance(self, sopInstanceUID):
        return self._files.get(sopInstanceUID, "")


dicomDatabase = ctkDICOMDatabase()

from . import util  # noqa: E402  (slicer.util uses the names above)
