"""Fast checks of the OHIF (DICOMweb) mode's parts, without a browser or Orthanc.

- ``lib.ohif_static``: the fixed ``/ohif/`` route on a real FastAPI app next to MONAI Label's own
  (which answers sub-folder files with ``index.html``), the manifest and the added mode script;
- ``bin/itkimage2segimage``: the dcmqi-compatible DICOM-SEG writer, run as MONAI Label runs it,
  read back with highdicom;
- ``scripts/make_ohif_demo_dicoms.py``: the demo DX file;
- ``scripts/start_ohif_mode.sh``: refuses bad options before starting anything.

The browser path is in ``tests/test_ohif_e2e.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "afloc_label"
SEG_WRITER = APP_DIR / "bin" / "itkimage2segimage"

sys.path.insert(0, str(REPO_ROOT / "scripts"))
if str(APP_DIR) not in sys.path:
    sys.path.append(str(APP_DIR))

import make_ohif_demo_dicoms as demo  # noqa: E402

# --------------------------------------------------------------------------------------------
# /ohif/ route
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ohif_apps():
    """Two FastAPI apps with MONAI Label's OHIF router: the stock one, and one with our fix."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from monailabel.endpoints import ohif as stock_ohif

    from lib import ohif_static

    stock, fixed = FastAPI(), FastAPI()
    for app in (stock, fixed):
        app.include_router(stock_ohif.router)
    ohif_static.install(fixed)
    ohif_static.install(fixed)  # idempotent
    return TestClient(stock), TestClient(fixed)


def test_stock_route_answers_subfolder_files_with_index_html(ohif_apps):
    """The bug being fixed: if this starts failing, MONAI Label fixed it upstream."""
    stock, _ = ohif_apps
    reply = stock.get("/ohif/assets/favicon.ico")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")


def test_fixed_route_serves_subfolder_files(ohif_apps):
    _, fixed = ohif_apps
    reply = fixed.get("/ohif/assets/favicon-32x32.png")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "image/png"
    assert reply.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_fixed_route_types_and_spa_routes(ohif_apps):
    _, fixed = ohif_apps
    wasm = next(p.name for p in (_ohif_root()).glob("*.wasm"))
    assert fixed.get(f"/ohif/{wasm}").headers["content-type"] == "application/wasm"
    for route in ("/ohif/", "/ohif/afloc", "/ohif/viewer/extra"):
        reply = fixed.get(route)
        assert reply.status_code == 200 and reply.text.lstrip().lower().startswith("<!doctype html"), route


@pytest.mark.parametrize(
    "path", ["/ohif/assets/missing.png", "/ohif/../main.py", "/ohif/%2e%2e/%2e%2e/config.py", "/ohif/assets/..%2f..%2fconfig.py"]
)
def test_fixed_route_refuses_missing_files_and_escapes(ohif_apps, path):
    _, fixed = ohif_apps
    reply = fixed.get(path)
    assert reply.status_code == 404 or reply.text.lstrip().lower().startswith("<!doctype html"), path
    assert "import" not in reply.text  # never a Python file from outside the bundle


def test_resolve_rules():
    from lib.ohif_static import resolve_ohif_file

    root = _ohif_root()
    assert resolve_ohif_file(root, "") == root / "index.html"
    assert resolve_ohif_file(root, "assets/favicon.ico") == root / "assets" / "favicon.ico"
    assert resolve_ohif_file(root, "monai-label") == root / "index.html"
    assert resolve_ohif_file(root, "assets/nothing.png") is None
    assert resolve_ohif_file(root, "../main.py") is None
    assert resolve_ohif_file(root, "/etc/passwd") is None
    assert resolve_ohif_file(root, "assets\\favicon.ico") is None


def test_manifest_icons_point_into_the_bundle(ohif_apps):
    _, fixed = ohif_apps
    icons = fixed.get("/ohif/manifest.json").json()["icons"]
    assert icons and all(icon["src"].startswith("/ohif/assets/") for icon in icons)
    for icon in icons[:3]:
        assert fixed.get(icon["src"]).headers["content-type"] == "image/png"


def test_app_config_adds_the_afloc_mode(ohif_apps):
    _, fixed = ohif_apps
    reply = fixed.get("/ohif/app-config.js")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/javascript")
    text = reply.text
    stock = (_ohif_root() / "app-config.js").read_text()
    assert text.startswith(stock.rstrip())
    assert "afloc-label-xray" in text and "routeName: 'afloc'" in text


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_app_config_is_valid_javascript_and_registers_the_mode(ohif_apps, tmp_path):
    _, fixed = ohif_apps
    script = tmp_path / "app-config.js"
    script.write_text(fixed.get("/ohif/app-config.js").text)
    check = (
        "global.window = {location: {origin: 'http://x'}}; global.document = {cookie: ''};"
        f"require({json.dumps(str(script))});"
        "const modes = window.config.modes; const m = modes[0].modeFactory();"
        "console.log(JSON.stringify({n: modes.length, id: m.id, route: m.routes[0].path, hp: m.hangingProtocol,"
        " cr: m.isValidMode({modalities: 'CR'}).valid, ct: m.isValidMode({modalities: 'CT'}).valid}));"
    )
    out = subprocess.run(["node", "-e", check], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info == {"n": 1, "id": "afloc-label-xray", "route": "afloc", "hp": "default", "cr": True, "ct": False}


def _ohif_root() -> Path:
    from lib.ohif_static import ohif_dir

    return ohif_dir().resolve()


# --------------------------------------------------------------------------------------------
# itkimage2segimage (DICOM-SEG writer behind dcmqi's command line)
# --------------------------------------------------------------------------------------------


def _dcmqi_metadata(segments: list[dict]) -> dict:
    """Metadata shaped as monailabel.datastore.utils.convert.nifti_to_dicom_seg writes it."""
    return {
        "ContentCreatorName": "Reader1",
        "SeriesDescription": "afloc",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "segmentAttributes": [segments],
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": "MONAI Label - Image segmentation",
        "BodyPartExamined": "",
    }


@pytest.fixture(scope="module")
def dx_series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dx-series")
    demo.write_demo_dx(folder, seed=5, size=128)
    return folder


def _write_label(series: Path, array: np.ndarray, path: Path) -> Path:
    """A label image on the series' own grid, as MONAI Label's NIfTI conversion gives it."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(next(series.glob("*.dcm"))))
    image = reader.Execute()
    label = sitk.GetImageFromArray(array[np.newaxis])  # [1, H, W] = [k, j, i]
    label.CopyInformation(image)
    sitk.WriteImage(label, str(path))
    return path


def _run_writer(label: Path, series: Path, out: Path, metadata: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(metadata))
    return subprocess.run(
        [str(SEG_WRITER), "--inputImageList", str(label), "--inputDICOMDirectory", str(series),
         "--outputDICOM", str(out), "--inputMetadata", str(meta)],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AFLOC_PYTHON": sys.executable},
    )  # fmt: skip


def test_seg_writer_writes_what_the_label_holds(dx_series, tmp_path):
    import highdicom as hd
    import pydicom

    array = np.zeros((128, 128), np.uint8)
    array[10:40, 20:70] = 2  # label ids need not start at 1: segments are renumbered
    array[80:100, 5:30] = 7
    array[0:5, 0:5] = 9  # no metadata entry: left out
    label = _write_label(dx_series, array, tmp_path / "label.nii.gz")
    segments = [
        {"labelID": 2, "SegmentLabel": "right pleural effusion", "SegmentAlgorithmType": "AUTOMATIC",
         "SegmentAlgorithmName": "AFLoc", "recommendedDisplayRGBValue": [255, 0, 0]},
        {"labelID": 7, "SegmentLabel": "pneumothorax", "SegmentAlgorithmType": "MANUAL"},
    ]  # fmt: skip
    out = tmp_path / "seg.dcm"
    done = _run_writer(label, dx_series, out, _dcmqi_metadata(segments), tmp_path)
    assert done.returncode == 0, done.stderr

    seg = hd.seg.segread(str(out))
    source = pydicom.dcmread(str(next(dx_series.glob("*.dcm"))), stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SeriesDescription == "afloc"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["right pleural effusion", "pneumothorax"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[1].SegmentAlgorithmType == "MANUAL"
    # Pure sRGB red is L* 53.24, a* 80.09, b* 67.20; highdicom scales CIELab as DICOM wants.
    lab = list(seg.SegmentSequence[0].RecommendedDisplayCIELabValue)
    assert lab == pytest.approx(list(hd.color.CIELabColor(53.24, 80.09, 67.20).value), abs=30)
    masks = seg.get_volume(combine_segments=False).array if hasattr(seg, "get_volume") else None
    if masks is None:  # highdicom < 0.23
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False
        )
    masks = np.asarray(masks)[0]  # [H, W, S]
    assert np.array_equal(masks[..., 0] > 0, array == 2)
    assert np.array_equal(masks[..., 1] > 0, array == 7)


def test_seg_writer_refuses_a_label_off_the_grid(dx_series, tmp_path):
    import SimpleITK as sitk

    label = tmp_path / "small.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 64, 64), np.uint8)), str(label))
    done = _run_writer(label, dx_series, tmp_path / "seg.dcm", _dcmqi_metadata([{"labelID": 1}]), tmp_path)
    assert done.returncode == 1
    assert "64x64x1" in done.stderr and "128x128x1" in done.stderr
    assert not (tmp_path / "seg.dcm").exists()


def test_seg_writer_refuses_metadata_without_segments(dx_series, tmp_path):
    label = _write_label(dx_series, np.ones((128, 128), np.uint8), tmp_path / "label.nii.gz")
    done = _run_writer(label, dx_series, tmp_path / "seg.dcm", {"SeriesDescription": "x"}, tmp_path)
    assert done.returncode == 1 and "segmentAttributes" in done.stderr


def test_monailabel_finds_the_writer_and_skips_the_download():
    """MONAI Label downloads dcmqi unless exactly this file exists in <app>/bin."""
    assert SEG_WRITER.is_file() and SEG_WRITER.stat().st_mode & 0o111


# --------------------------------------------------------------------------------------------
# Demo DICOM files and the start script
# --------------------------------------------------------------------------------------------


def test_demo_dx_is_a_calibrated_dx_image(tmp_path):
    import pydicom

    first = demo.write_demo_dx(tmp_path / "a", seed=5, size=128)
    second = demo.write_demo_dx(tmp_path / "b", seed=5, size=128)
    ds = pydicom.dcmread(str(first))
    assert ds.Modality == "DX" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([400 / 128] * 2)
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([400 / 128] * 2)
    pixels = ds.pixel_array
    assert pixels.shape == (128, 128) and 2000 < int(pixels.max()) <= 4095
    # Same seed, same instance: uploading again does not duplicate the study.
    again = pydicom.dcmread(str(second), stop_before_pixels=True)
    assert (again.StudyInstanceUID, again.SOPInstanceUID) == (ds.StudyInstanceUID, ds.SOPInstanceUID)


def test_demo_cr_is_the_real_radiograph(tmp_path):
    import pydicom

    ds = pydicom.dcmread(str(demo.write_demo_cr(tmp_path)), stop_before_pixels=True)
    assert ds.Modality == "CR" and (ds.Rows, ds.Columns) == (1955, 1841)


@pytest.mark.parametrize(
    "args, message",
    [(["--port", "70000"], "not a TCP port"), (["--port", "8042"], "different ports"), (["--bogus"], "unknown option")],
)
def test_start_script_refuses_bad_options(args, message):
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "start_ohif_mode.sh"), *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and message in done.stderr
