"""Stand-in for Base/Python/slicer/ScriptedLoadableModule.py (v5.8.1; line numbers of that file)."""

from __future__ import annotations

import logging
import os
import unittest

import qt

import slicer


# l.17
class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        moduleDir = os.path.dirname(self.parent.path)
        for iconExtension in [".svg", ".png"]:
            iconPath = os.path.join(moduleDir, "Resources/Icons", self.moduleName + iconExtension)
            if os.path.isfile(iconPath):
                parent.icon = qt.QIcon(iconPath)
                break
        try:
            slicer.selfTests
        except AttributeError:
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    # l.53
    def resourcePath(self, filename):
        scriptedModulesPath = os.path.dirname(self.parent.path)
        return os.path.join(scriptedModulesPath, "Resources", filename)

    # l.72
    def runTest(self, msec=100, **kwargs):
        import importlib

        module = importlib.import_module(self.__module__)
        className = self.moduleName + "Test"
        testCaseClass = getattr(module, className)
        testCase = testCaseClass()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


# l.88
class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool)
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    # l.112
    def resourcePath(self, filename):
        scriptedModulesPath = os.path.dirname(slicer.util.modulePath(self.moduleName))
        return os.path.join(scriptedModulesPath, "Resources", filename)

    # l.117
    def cleanup(self):
        pass

    # l.126
    def _onModuleAboutToBeUnloaded(self, moduleName):
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    # l.232 (the developer section's Reload/Test buttons are not modelled)
    def setup(self):
        pass


# l.296
class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True


# l.367
class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        self.moduleTestNames = []
        super().__init__(*args, **kwargs)
        super(unittest.TestCase, self).__init__()
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0
        if not self.moduleTestNames:
            self.moduleTestNames = [m for m in dir(self) if "test" in m and callable(getattr(self, m))]

    # l.389 (logs instead of showing a message box)
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)
        slicer.app.processEvents()

    def setUp(self):
        return

    def tearDown(self):
        return

    def runTest(self):
        if len(self.moduleTestNames) == 0:
            logging.warning("No test is defined in " + self.__class__.__name__)
            return
        self.setUpClass()
        for test_name in self.moduleTestNames:
            self.setUp()
            getattr(self, test_name)()
            self.tearDown()
        self.tearDownClass()
