"""Test driver for the Slicer stand-in (not part of Slicer): load the real AFLoc module into it,
pump its event loop, answer its modal dialogs.

``install()`` puts the stand-in's ``slicer``, ``vtk``, ``qt`` and ``ctk`` first on ``sys.path`` and a
``PythonSlicer`` launcher (running this Python, as Slicer's launcher runs Slicer's) first on ``PATH``.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
import time
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent
MODULE_DIR = STANDIN_DIR.parents[1] / "slicer_extension" / "AFLoc"


def install(bin_dir: Path) -> None:
    """Make ``import slicer`` etc. resolve to the stand-in, and ``PythonSlicer`` to this Python."""
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


class ModuleParent:
    """qSlicerScriptedLoadableModule's Python-visible attributes (Base/QTGUI/qSlicerScriptedLoadableModule.h)."""

    __slots__ = ("title", "categories", "dependencies", "contributors", "helpText", "acknowledgementText",
                 "icon", "path")

    def __init__(self, path: str):
        self.path = path


def reset() -> None:
    """A fresh application state: empty scene, no settings, no timers, no queued dialogs."""
    import qt
    import slicer

    slicer.mrmlScene.Clear(1)
    qt._reset()
    slicer.modules.terminologies.logic().loaded.clear()
    slicer.dicomDatabase._files.clear()


def load_module():
    """Import ``AFLoc.py`` as Slicer does, run startup, and set up its widget: ``(module, widget)``."""
    import slicer

    for name in [n for n in sys.modules if n == "AFLoc" or n == "AFLocLib" or n.startswith("AFLocLib.")]:
        del sys.modules[name]
    module = importlib.import_module("AFLoc")
    path = str(MODULE_DIR / "AFLoc.py")
    slicer.app.moduleManager()._paths["AFLoc"] = path
    module.AFLoc(ModuleParent(path))
    slicer.app._emit("startupCompleted()")
    parent = slicer.qMRMLWidget()
    import qt

    parent.setLayout(qt.QVBoxLayout())
    parent.setMRMLScene(slicer.mrmlScene)
    widget = module.AFLocWidget(parent)
    widget.setup()
    return module, widget


def unload(widget) -> None:
    import slicer

    slicer.app.moduleManager()._emit("moduleAboutToBeUnloaded(QString)", "AFLoc")


def pump(seconds: float = 0.2) -> None:
    import slicer

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        slicer.app.processEvents()
        time.sleep(0.01)


def pump_until(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    import slicer

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        slicer.app.processEvents()
        time.sleep(0.02)


def answer_dialog(button, checkbox=None) -> None:
    """Queue the answer to the next modal dialog (``qt.QMessageBox.Yes``...), and its check box state."""
    import qt

    qt.QMessageBox._answers.append((button, checkbox))


def shown_dialogs() -> list:
    import qt

    return list(qt.QMessageBox._shown)
