"""Stand-in for the ``qt`` (PythonQt, Qt 5.15) names the AFLoc module and its ``.ui`` file use.

PythonQt exposes Qt properties as attributes (``button.enabled = False``), signals through
``obj.connect("signal(args)", slot)``, and enums as class attributes. Each class below lists its
Qt properties (``PROPERTIES``: name -> default) and signals (``SIGNALS``); reading or writing any
other attribute raises ``AttributeError``, connecting any other signal raises ``ValueError``
(PythonQt prints "signal not found" and returns False; failing loudly is stricter).

Signals and ``QTimer`` timeouts are delivered by the event loop (:func:`_process_events`, called
by ``slicer.app.processEvents()``), except signals a widget emits synchronously in Qt (a property
change such as ``valueChanged``), which call their slots at once, as Qt's direct connections do.
``QMessageBox.exec_()`` is modal: it takes the answer the test queued with
``harness.answer_dialog`` and fails the test if none was queued.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree

# ---------------------------------------------------------------------- the event loop
_TIMERS: list = []


def _process_events() -> None:
    """Fire every active QTimer whose interval has elapsed (qcoreapplication processEvents)."""
    now = time.monotonic()
    for timer in list(_TIMERS):
        if timer._active and now >= timer._due:
            if timer._p["singleShot"]:
                timer._active = False
                _TIMERS.remove(timer)
            else:
                timer._due = now + timer._p["interval"] / 1000.0
            timer._emit("timeout()")


def _reset() -> None:
    _TIMERS.clear()
    QSettings._store.clear()
    QMessageBox._answers.clear()
    QMessageBox._shown.clear()


# ---------------------------------------------------------------------- QObject
class QObject:
    """Properties and signals, strictly (qobject.h; PythonQt property access)."""

    PROPERTIES: dict = {"objectName": ""}
    SIGNALS: tuple = ("destroyed()",)

    def __init__(self, parent=None):
        object.__setattr__(self, "_p", {})
        object.__setattr__(self, "_slots", {})
        object.__setattr__(self, "_blocked", False)
        object.__setattr__(self, "_parent", parent)
        object.__setattr__(self, "_children", [])
        for klass in reversed(type(self).__mro__):
            self._p.update(getattr(klass, "PROPERTIES", {}) if "PROPERTIES" in vars(klass) else {})
        if isinstance(parent, QObject):
            parent._children.append(self)

    @classmethod
    def _signals(cls) -> set:
        names = set()
        for klass in cls.__mro__:
            names.update(vars(klass).get("SIGNALS", ()))
        return names

    def __getattr__(self, name):
        p = object.__getattribute__(self, "_p")
        if name == "name":  # PythonQt alias of objectName
            return p["objectName"]
        if name in p:
            return p[name]
        raise AttributeError(f"stand-in: {type(self).__name__} has no attribute '{name}' in Qt 5.15/PythonQt")

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name == "name":
            name = "objectName"
        if name not in self._p:
            raise AttributeError(f"stand-in: {type(self).__name__} has no property '{name}' in Qt 5.15")
        self._setProperty(name, value)

    def _setProperty(self, name, value):
        self._p[name] = value

    def setProperty(self, name, value):
        self.__setattr__(name, value)

    def property(self, name):
        return self.__getattr__(name)

    def connect(self, signal, slot):
        if signal not in self._signals():
            raise ValueError(f"stand-in: {type(self).__name__} has no signal '{signal}'")
        self._slots.setdefault(signal, []).append(slot)
        return True

    def disconnect(self, signal, slot=None):
        slots = self._slots.get(signal, [])
        if slot is None:
            slots.clear()
        elif slot in slots:
            slots.remove(slot)
        return True

    def blockSignals(self, block):
        previous = self._blocked
        self._blocked = bool(block)
        return previous

    def signalsBlocked(self):
        return self._blocked

    def _emit(self, signal, *args):
        if self._blocked:
            return
        for slot in list(self._slots.get(signal, [])):
            slot(*args)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def findChildren(self, *args):
        found = []
        for child in self._children:
            found.append(child)
            found.extend(child.findChildren())
        return found

    def deleteLater(self):
        pass


# ---------------------------------------------------------------------- core classes
class QTimer(QObject):
    """qtimer.h: ``interval`` (ms), ``singleShot``, ``active``; ``start()``, ``stop()``, ``timeout()``."""

    PROPERTIES = {"interval": 0, "singleShot": False}
    SIGNALS = ("timeout()",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._active = False
        self._due = 0.0

    def __getattr__(self, name):
        if name == "active":
            return self._active
        return super().__getattr__(name)

    def setInterval(self, msec):
        self._p["interval"] = int(msec)

    def setSingleShot(self, singleShot):
        self._p["singleShot"] = bool(singleShot)

    def isActive(self):
        return self._active

    def start(self, msec=None):
        if msec is not None:
            self._p["interval"] = int(msec)
        self._active = True
        self._due = time.monotonic() + self._p["interval"] / 1000.0
        if self not in _TIMERS:
            _TIMERS.append(self)

    def stop(self):
        self._active = False
        if self in _TIMERS:
            _TIMERS.remove(self)


class QSettings(QObject):
    """qsettings.h: ``value(key, defaultValue)``, ``setValue(key, value)``, ``remove(key)``, ``contains(key)``.

    One store for the session (Slicer's settings file); the harness clears it between tests.
    """

    _store: dict = {}

    def value(self, key, defaultValue=None):
        return QSettings._store.get(key, defaultValue)

    def setValue(self, key, value):
        QSettings._store[key] = value

    def remove(self, key):
        for stored in [k for k in QSettings._store if k == key or k.startswith(key + "/")]:
            del QSettings._store[stored]

    def contains(self, key):
        return key in QSettings._store

    def sync(self):
        pass


class QIcon:
    """qicon.h (constructed from a file path)."""

    __slots__ = ("_path",)

    def __init__(self, path=""):
        self._path = path


class QFile(QObject):
    """qfile.h: ``exists()``, ``open(mode)``, ``close()``; ``QFile.ReadOnly``."""

    ReadOnly = 1

    def __init__(self, name):
        super().__init__()
        self._name = str(name)

    def exists(self):
        import os

        return os.path.isfile(self._name)

    def open(self, mode):
        return self.exists()

    def close(self):
        pass

    def fileName(self):
        return self._name


# ---------------------------------------------------------------------- widgets
class QWidget(QObject):
    """qwidget.h properties used by the module and the .ui file."""

    PROPERTIES = {"enabled": True, "visible": True, "toolTip": "", "geometry": None, "sizePolicy": None,
                  "minimumSize": None, "maximumSize": None, "styleSheet": "", "whatsThis": ""}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._layout = None

    def setLayout(self, layout):
        self._layout = layout
        layout._parent = self
        self._children.append(layout)

    def layout(self):
        return self._layout

    def show(self):
        self._p["visible"] = True

    def hide(self):
        self._p["visible"] = False

    def setEnabled(self, enabled):
        self.enabled = enabled

    def setVisible(self, visible):
        self.visible = visible

    def isEnabled(self):
        return self._p["enabled"]

    def findChildren(self, *args):
        found = []
        for child in self._children:
            found.append(child)
            found.extend(child.findChildren())
        return found


class QMainWindow(QWidget):
    pass


class QLayout(QObject):
    """qlayout.h: ``addWidget(widget)``, ``addLayout(layout)``; children are reparented."""

    PROPERTIES = {"spacing": 0, "contentsMargins": None, "leftMargin": 0, "topMargin": 0, "rightMargin": 0,
                  "bottomMargin": 0, "horizontalSpacing": 0, "verticalSpacing": 0}

    def addWidget(self, widget):
        widget._parent = self._parent
        self._children.append(widget)

    def addLayout(self, layout):
        layout._parent = self._parent
        self._children.append(layout)

    def count(self):
        return len(self._children)

    def findChildren(self, *args):
        found = []
        for child in self._children:
            found.append(child)
            found.extend(child.findChildren())
        return found


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    PROPERTIES = {"fieldGrowthPolicy": None, "labelAlignment": None}

    def addRow(self, label, field=None):
        for item in (label, field):
            if isinstance(item, QObject):
                self.addWidget(item) if isinstance(item, QWidget) else self.addLayout(item)


class QGridLayout(QLayout):
    """qgridlayout.h: ``addWidget(widget, row, column)`` (and with row/column spans)."""

    def addWidget(self, widget, row=None, column=None, rowSpan=1, columnSpan=1):
        if row is None or column is None:
            raise TypeError("QGridLayout.addWidget needs (widget, row, column)")
        super().addWidget(widget)


class QAbstractButton(QWidget):
    PROPERTIES = {"text": "", "checkable": False, "checked": False, "icon": None}
    SIGNALS = ("clicked()", "clicked(bool)", "toggled(bool)", "pressed()", "released()")

    def __init__(self, text="", parent=None):
        if isinstance(text, QObject):
            text, parent = "", text
        super().__init__(parent)
        self._p["text"] = text

    def _setProperty(self, name, value):
        old = self._p.get(name)
        super()._setProperty(name, value)
        if name == "checked" and bool(value) != bool(old):
            self._emit("toggled(bool)", bool(value))

    def click(self):
        """Qt's ``click()``: a user click (ignored when disabled)."""
        if not self._p["enabled"]:
            return
        if self._p["checkable"]:
            self.checked = not self._p["checked"]
        self._emit("clicked()")
        self._emit("clicked(bool)", bool(self._p["checked"]))

    def setText(self, text):
        self.text = text

    def setChecked(self, checked):
        self.checked = checked


class QPushButton(QAbstractButton):
    PROPERTIES = {"default": False, "autoDefault": False, "flat": False}


class QCheckBox(QAbstractButton):
    PROPERTIES = {"checkable": True, "tristate": False}


class QLabel(QWidget):
    PROPERTIES = {"text": "", "wordWrap": False, "alignment": None, "textFormat": None, "openExternalLinks": False}

    def setText(self, text):
        self.text = text


class QLineEdit(QWidget):
    PROPERTIES = {"text": "", "placeholderText": "", "echoMode": "QLineEdit::Normal", "readOnly": False,
                  "clearButtonEnabled": False}
    SIGNALS = ("textChanged(QString)", "editingFinished()", "returnPressed()")

    Normal = "QLineEdit::Normal"
    Password = "QLineEdit::Password"

    def _setProperty(self, name, value):
        changed = name == "text" and value != self._p.get("text")
        super()._setProperty(name, value)
        if changed:
            self._emit("textChanged(QString)", value)

    def setText(self, text):
        self.text = text

    def clear(self):
        self.text = ""


class QComboBox(QWidget):
    """qcombobox.h: items, ``currentIndex``/``currentText``, ``setEditText`` (editable combos)."""

    PROPERTIES = {"editable": False, "insertPolicy": None, "maxVisibleItems": 10}
    SIGNALS = ("currentIndexChanged(int)", "currentTextChanged(QString)", "editTextChanged(QString)",
               "activated(int)")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []
        self._index = -1
        self._editText = ""

    def __getattr__(self, name):
        if name == "currentIndex":
            return self._index
        if name == "currentText":
            if self._p["editable"]:
                return self._editText
            return self._items[self._index] if self._index >= 0 else ""
        if name == "count":
            return len(self._items)
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        if name == "currentIndex":
            self.setCurrentIndex(value)
        elif name == "currentText" and self._p.get("editable"):
            self.setEditText(value)
        else:
            super().__setattr__(name, value)

    def addItem(self, text):
        self._items.append(str(text))
        if self._index < 0:
            self.setCurrentIndex(0)

    def clear(self):
        self._items = []
        self._editText = ""
        if self._index != -1:
            self._index = -1
            self._emit("currentIndexChanged(int)", -1)

    def setCurrentIndex(self, index):
        index = int(index)
        if not -1 <= index < len(self._items):
            return
        if index != self._index:
            self._index = index
            if self._p["editable"] and index >= 0:
                self._editText = self._items[index]
            self._emit("currentIndexChanged(int)", index)

    def setEditText(self, text):
        self._editText = str(text)

    def itemText(self, index):
        return self._items[index]


class QProgressBar(QWidget):
    PROPERTIES = {"value": 0, "minimum": 0, "maximum": 100, "textVisible": True, "format": "%p%"}

    def setRange(self, minimum, maximum):
        self._p["minimum"], self._p["maximum"] = int(minimum), int(maximum)


class QPlainTextEdit(QWidget):
    PROPERTIES = {"plainText": "", "readOnly": False, "placeholderText": "", "maximumBlockCount": 0}

    def setPlainText(self, text):
        self._p["plainText"] = str(text)

    def toPlainText(self):
        return self._p["plainText"]

    def clear(self):
        self._p["plainText"] = ""


class QMessageBox(QWidget):
    """qmessagebox.h, modal. ``exec_()`` returns the answer queued by the test harness.

    The dialog's text, title and check box state are recorded in ``QMessageBox._shown``.
    """

    PROPERTIES = {"text": "", "windowTitle": "", "icon": None, "detailedText": "", "informativeText": ""}

    Ok, Cancel, Yes, No, Retry, Close = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4

    _answers: list = []
    _shown: list = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self._buttons = 0
        self._default = None
        self._checkBox = None

    def setWindowTitle(self, title):
        self._p["windowTitle"] = title

    def setText(self, text):
        self._p["text"] = text

    def setIcon(self, icon):
        self._p["icon"] = icon

    def setStandardButtons(self, buttons):
        self._buttons = buttons

    def setDefaultButton(self, button):
        self._default = button

    def setCheckBox(self, checkBox):
        self._checkBox = checkBox

    def checkBox(self):
        return self._checkBox

    def exec_(self):
        if not QMessageBox._answers:
            raise AssertionError(f"stand-in: unexpected modal dialog '{self._p['windowTitle']}': {self._p['text']}")
        button, checkBoxChecked = QMessageBox._answers.pop(0)
        if not self._buttons & button:
            raise AssertionError(f"stand-in: dialog '{self._p['windowTitle']}' has no button {button:#x}")
        if self._checkBox is not None and checkBoxChecked is not None:
            self._checkBox.checked = checkBoxChecked
        QMessageBox._shown.append({"title": self._p["windowTitle"], "text": self._p["text"], "answer": button})
        return button

    def exec(self):
        return self.exec_()


class QUiLoader(QObject):
    """QtUiTools ``QUiLoader.load(QFile)``: builds the widget tree of a Designer ``.ui`` file.

    Every widget class, property and connection in the file must exist here (strict); custom
    Slicer/CTK widgets come from the ``slicer`` and ``ctk`` stand-ins.
    """

    def load(self, qfile, parentWidget=None):
        tree = ElementTree.parse(qfile.fileName())
        root = tree.getroot()
        top = self._build(root.find("widget"), None)
        named = {o.objectName: o for o in [top] + top.findChildren()}
        connections = root.find("connections")
        for connection in connections if connections is not None else []:
            sender = named[connection.findtext("sender")]
            receiver = named[connection.findtext("receiver")]
            slot = connection.findtext("slot")
            method = getattr(receiver, slot.split("(")[0])
            sender.connect(connection.findtext("signal"), method)
        return top

    def _build(self, element, parent):
        if element.tag == "widget":
            obj = _widget_class(element.get("class"))(parent)
        else:
            obj = _widget_class(element.get("class"))()
        obj.objectName = element.get("name") or ""
        for prop in element.findall("property"):
            obj.setProperty(prop.get("name"), _property_value(prop))
        for child in element:
            if child.tag == "layout":
                layout = self._build(child, None)
                if isinstance(obj, QWidget):
                    obj.setLayout(layout)
                else:
                    obj.addLayout(layout)
            elif child.tag == "item":
                for grandchild in child:
                    if grandchild.tag == "widget":
                        widget = self._build(grandchild, None)
                        QLayout.addWidget(obj, widget)
                    elif grandchild.tag == "layout":
                        obj.addLayout(self._build(grandchild, None))
                    elif grandchild.tag == "spacer":
                        pass
            elif child.tag == "widget":
                widget = self._build(child, obj)
        return obj


def _widget_class(name):
    import ctk
    import slicer

    for module in (globals(), vars(ctk), vars(slicer)):
        if name in module:
            return module[name]
    raise AttributeError(f"stand-in: .ui file uses widget class '{name}' which the stand-in does not provide")


def _property_value(prop):
    value = prop[0]
    if value.tag in ("string", "enum", "set", "cstring"):
        return value.text or ""
    if value.tag == "bool":
        return value.text == "true"
    if value.tag == "number":
        return int(value.text)
    if value.tag == "double":
        return float(value.text)
    if value.tag == "stringlist":
        return [s.text or "" for s in value.findall("string")]
    return None  # rect, size, font...: layout only
