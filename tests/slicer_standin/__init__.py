"""A strict, test-only stand-in for the part of 3D Slicer 5.8's Python API the AFLoc module uses.

Put this folder on ``sys.path`` and ``import slicer, vtk, qt, ctk`` give the classes, functions and
signatures that Slicer 5.8.1 has for what ``slicer_extension/AFLoc/AFLoc.py`` calls, each citing
where Slicer defines it (a header of Slicer/Slicer at tag v5.8.1, or a line of
``Base/Python/slicer/util.py`` / ``ScriptedLoadableModule.py`` there). Everything else is
absent: classes use ``__slots__`` or a property whitelist, so an unknown method or attribute
raises ``AttributeError``, and methods take exactly Slicer's positional arguments, so a wrong
call raises ``TypeError`` (``vtkSegment.GetTag(name)`` with one argument, as VTK's wrapper does).

Behaviour is real where it matters to the module: volumes and segments hold numpy voxels with
their IJK-to-RAS geometry (segments are resampled onto the reference volume, nearest neighbour),
``loadSegmentation`` / ``exportNode`` read and write real ``.seg.nrrd`` / NIfTI files (pynrrd,
nibabel), ``QTimer`` and signals run through an event loop that ``slicer.app.processEvents()``
pumps, ``QSettings`` keeps values for the session. What it cannot show (Slicer's GIL handling,
rendering) is listed in docs/slicer.md. :mod:`.harness` is the test driver (not part of Slicer).
"""
