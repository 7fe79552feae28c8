"""Stand-in for the CTK widgets in the AFLoc module's ``.ui`` file (CTK as bundled with Slicer 5.8).

- ``ctkCollapsibleButton`` (Libs/Widgets/ctkCollapsibleButton.h): ``text``, ``collapsed``.
- ``ctkSliderWidget`` (Libs/Widgets/ctkSliderWidget.h): ``value`` (clamped to
  ``minimum``..``maximum``), ``singleStep``, ``pageStep``, ``decimals``; ``valueChanged(double)``
  is emitted synchronously when the value changes (unless signals are blocked).
"""

from __future__ import annotations

import qt


class ctkCollapsibleButton(qt.QAbstractButton):
    PROPERTIES = {"collapsed": False, "collapsedHeight": 14, "contentsFrameShape": None}
    SIGNALS = ("contentsCollapsed(bool)",)


class ctkSliderWidget(qt.QWidget):
    PROPERTIES = {"value": 0.0, "minimum": 0.0, "maximum": 99.0, "singleStep": 1.0, "pageStep": 10.0,
                  "decimals": 2, "suffix": "", "prefix": "", "tracking": True}
    SIGNALS = ("valueChanged(double)", "valueIsChanging(double)")

    def _setProperty(self, name, value):
        if name != "value":
            super()._setProperty(name, value)
            return
        value = min(max(float(value), float(self._p["minimum"])), float(self._p["maximum"]))
        changed = value != self._p["value"]
        super()._setProperty(name, value)
        if changed:
            self._emit("valueChanged(double)", value)

    def setValue(self, value):
        self.value = value

    def setRange(self, minimum, maximum):
        self._p["minimum"], self._p["maximum"] = float(minimum), float(maximum)
