"""Write the demo DICOM files of the OHIF (DICOMweb) mode into a folder.

- ``cr_chest_RG1.dcm``: the real chest CR ``RG1_UNCI.dcm`` shipped by the ``pydicom-data``
  package, copied unchanged (MONOCHROME1, 15 bits stored, and a real-world unusable
  ``PixelSpacing`` of ``0\\0``: the app falls back to 1 mm and says so in its reply).
- ``dx_phantom.dcm``: a synthetic frontal chest radiograph (``afloc_training.phantoms``) written as a
  proper DX "for presentation" image: 12 bits stored, MONOCHROME2, ``PixelSpacing`` and
  ``ImagerPixelSpacing`` of :data:`DX_SPACING_MM`, patient orientation ``L\\F``. Its UIDs are
  derived from the seed, so writing it again gives the same instance (an upload to Orthanc is
  then a no-op, not a duplicate study).
- ``cr_chest_RG1_report.dcm`` and ``dx_phantom_report.dcm``: a final report as a DICOM
  Comprehensive SR (written with highdicom) in the study of each image, so the server reads the
  reports from the PACS (``GET /datastore/image/info`` shows them; training and drafting use
  them). The phantom's report is the one it was drawn with (FINDINGS / IMPRESSION sections);
  the real CR comes without a report, so its SR says only that no findings are stated (it
  drafts nothing).

Usage: ``python scripts/make_ohif_demo_dicoms.py OUT_DIR [--seed N] [--size PX]``; prints the
written paths, one a line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import os
import shutil
import site
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "CR_NAME",
    "CR_REPORT",
    "DX_NAME",
    "DX_SPACING_MM",
    "find_pydicom_data_file",
    "write_demo_cr",
    "write_demo_dx",
    "write_report_sr",
    "main",
]

CR_NAME = "cr_chest_RG1.dcm"
DX_NAME = "dx_phantom.dcm"
#: The demo CR's SR text: the public test image has no known findings, so none are stated.
CR_REPORT = (
    "IMPRESSION:\nFrontal chest radiograph from the pydicom-data test set. Its clinical findings are "
    "not known, so this demo report states none."
)
#: Field of view the phantoms assume (400 mm, see ``afloc_training.phantoms``) over the default 1024 px.
DX_FIELD_OF_VIEW_MM = 400.0
DX_SPACING_MM = DX_FIELD_OF_VIEW_MM / 1024
_DIGITAL_XRAY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def find_pydicom_data_file(name: str) -> Path:
    """Path of ``name`` inside the installed ``pydicom-data`` package (``data_store/data/``).

    ``pydicom.data.get_testdata_file`` would find it too, but needs ``pkg_resources``, which
    recent setuptools no longer ship.
    """
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for root in roots:
        hits = glob.glob(os.path.join(root, "data_store", "data", name))
        if hits:
            return Path(hits[0])
    raise FileNotFoundError(f"{name} not found: install the 'pydicom-data' package (pip install pydicom-data)")


def write_demo_cr(out_dir: Path) -> Path:
    """Copy the real chest CR into ``out_dir`` (unchanged)."""
    target = Path(out_dir) / CR_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(find_pydicom_data_file("RG1_UNCI.dcm"), target)
    return target


def write_demo_dx(out_dir: Path, seed: int = 5, size: int = 1024) -> Path:
    """Write a phantom chest radiograph ``[size, size]`` as a DX DICOM into ``out_dir``."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    from afloc_training.phantoms import generate_phantom

    phantom = generate_phantom(np.random.default_rng(seed), size=size)
    spacing = DX_FIELD_OF_VIEW_MM / size
    # 8-bit phantom -> 12 bits stored, as a flat-panel DX image would be.
    pixels = (phantom.image.astype(np.uint32) * 4095 // 255).astype(np.uint16)

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["afloc-ohif-demo-dx", str(seed), str(size), kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DIGITAL_XRAY_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = _EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    today = _dt.date(2024, 1, 1).strftime("%Y%m%d")  # fixed: the same seed gives the same file
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"PHANTOM{seed}"
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "AFLoc Label (synthetic phantom)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST PA (synthetic phantom)"
    ds.SeriesDescription = "Phantom chest PA"
    ds.PatientName = f"Phantom^Chest{seed}"
    ds.PatientID = f"PHANTOM-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "U"
    ds.DetectorType = "DIRECT"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = f"PH{seed}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    # PA view as displayed: columns run to the patient's left, rows to the feet.
    ds.PatientOrientation = ["L", "F"]
    ds.ImageComments = phantom.report[:10240]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.ImagerPixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.LossyImageCompression = "00"
    ds.PixelData = pixels.tobytes()

    target = Path(out_dir) / DX_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.is_little_endian, ds.is_implicit_VR = True, False  # pydicom 2 needs the encoding stated
    ds.save_as(str(target), write_like_original=False)
    return target


def write_report_sr(image_file: Path, report: str, out_file: Path, kind: str = "comprehensive") -> Path:
    """Write ``report`` (free text with FINDINGS / IMPRESSION labels) as a final SR in the study of
    ``image_file``, with UIDs derived from the image's, so writing it again gives the same instance."""
    import datetime as dt

    import pydicom
    from pydicom.uid import generate_uid

    from afloc_training.sr_reports import make_report_sr, report_sections

    image = pydicom.dcmread(str(image_file), stop_before_pixels=True)
    uid = lambda kind_: generate_uid(entropy_srcs=["afloc-demo-report", str(image.SOPInstanceUID), kind_])  # noqa: E731
    document = make_report_sr(
        image, report_sections(report), kind=kind, final=True, content_datetime=dt.datetime(2024, 1, 1, 13, 0),
        series_instance_uid=uid("series"), sop_instance_uid=uid("instance"),
    )  # fmt: skip
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    document.save_as(str(out_file))
    return out_file


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=5, help="phantom seed of the DX image")
    parser.add_argument("--size", type=int, default=1024, help="DX image size in pixels")
    args = parser.parse_args(argv)
    import pydicom

    cr, dx = write_demo_cr(args.out_dir), write_demo_dx(args.out_dir, args.seed, args.size)
    dx_report = str(pydicom.dcmread(str(dx), stop_before_pixels=True).ImageComments)  # the phantom's report
    reports = (
        write_report_sr(cr, CR_REPORT, Path(args.out_dir) / "cr_chest_RG1_report.dcm"),
        write_report_sr(dx, dx_report, Path(args.out_dir) / "dx_phantom_report.dcm"),
    )
    for path in (cr, dx, *reports):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
