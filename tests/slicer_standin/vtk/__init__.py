"""Stand-in for the ``vtk`` names the AFLoc module uses (VTK 9.x as bundled with Slicer 5.8).

- ``vtkObject`` observers: ``AddObserver(event, callback, priority=0.0)`` -> tag,
  ``RemoveObserver(tag)``, ``InvokeEvent(event, callData=None)`` (Common/Core/vtkObject.h);
  Python callbacks get ``(caller, eventName)``.
- ``vtkMatrix4x4`` (Common/Math/vtkMatrix4x4.h): ``GetElement(i, j)``, ``SetElement(i, j, v)``,
  ``DeepCopy(matrix)``, ``Identity()``, ``Invert()``.
- ``mutable`` (VTK's ``vtkmodules.vtkCommonCore.mutable``, exported as ``vtk.mutable``): the
  out-parameter holder that wrapped ``std::string&`` arguments need.
"""

from __future__ import annotations

import numpy as np

__all__ = ["vtkObject", "vtkMatrix4x4", "vtkCommand", "mutable"]


class mutable:
    """``vtk.mutable(value)``: ``get()``, ``set(value)``; behaves like its value in str/==/in."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def get(self):
        return self._value

    def set(self, value):
        self._value = value

    def __str__(self):
        return str(self._value)

    def __repr__(self):
        return f"mutable({self._value!r})"

    def __eq__(self, other):
        return self._value == (other._value if isinstance(other, mutable) else other)

    def __contains__(self, item):
        return item in self._value


class vtkCommand:
    """Event ids used by the module (Common/Core/vtkCommand.h)."""

    ModifiedEvent = 33


class vtkObject:
    """Base of every VTK/MRML object here: observers and the class name (vtkObject.h)."""

    __slots__ = ("_observers", "_nextTag", "__weakref__")

    def __init__(self):
        self._observers = {}
        self._nextTag = 1

    def GetClassName(self):
        return type(self).__name__

    def IsA(self, className):
        return any(c.__name__ == className for c in type(self).__mro__)

    def AddObserver(self, event, command, priority=0.0):
        tag = self._nextTag
        self._nextTag += 1
        self._observers[tag] = (event, command, float(priority))
        return tag

    def RemoveObserver(self, tag):
        self._observers.pop(tag, None)

    def HasObserver(self, event):
        return any(e == event for e, _, _ in self._observers.values())

    def InvokeEvent(self, event, callData=None):
        matching = [(p, tag, c) for tag, (e, c, p) in self._observers.items() if e == event]
        for _, _, command in sorted(matching, key=lambda m: (-m[0], m[1])):
            command(self, event)

    def Modified(self):
        self.InvokeEvent(vtkCommand.ModifiedEvent)


class vtkMatrix4x4(vtkObject):
    """4x4 matrix (Common/Math/vtkMatrix4x4.h); element access by (row, column)."""

    __slots__ = ("_m",)

    def __init__(self):
        super().__init__()
        self._m = np.eye(4)

    def GetElement(self, i, j):
        return float(self._m[int(i), int(j)])

    def SetElement(self, i, j, value):
        self._m[int(i), int(j)] = float(value)

    def DeepCopy(self, source):
        if not isinstance(source, vtkMatrix4x4):
            raise TypeError("DeepCopy argument 1: expected vtkMatrix4x4")
        self._m = source._m.copy()

    def Identity(self):
        self._m = np.eye(4)

    def Invert(self):
        self._m = np.linalg.inv(self._m)
