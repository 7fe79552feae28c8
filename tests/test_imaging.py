"""Image reading (DICOM, PNG, JPEG, NIfTI, .npy), its errors, and the letterbox geometry."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image, features
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from afloc_models import imaging
from afloc_models.errors import AFLocError, ImageReadError
from afloc_models.imaging import Letterbox, LoadedImage, letterbox, read_image, to_grayscale

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def pydicom_data_file(name: str) -> Path:
    """A file shipped by the pydicom-data package (a project dependency)."""
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
        if found:
            return Path(found)
    except Exception:  # pydicom<3 needs pkg_resources, gone from recent setuptools
        pass
    spec = importlib.util.find_spec("data_store")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / name
        if candidate.is_file():
            return candidate
    pytest.skip(f"pydicom-data is not installed ({name} not found)")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    preamble: bool = True,
    **elements: object,
) -> Path:
    """A minimal single-frame grayscale DICOM with ``pixels`` (uint16) and extra elements."""
    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    if preamble:
        ds.save_as(path, write_like_original=False)
    else:
        del ds.file_meta
        ds.save_as(path, write_like_original=True)
    return path


def ramp(height: int = 40, width: int = 60, top: int = 4095) -> np.ndarray:
    values = np.linspace(0, top, height * width)
    return np.round(values).reshape(height, width).astype(np.uint16)


def blob(height: int, width: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2).astype(np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


# --------------------------------------------------------------------------------------------
# Real CR radiograph from pydicom-data
# --------------------------------------------------------------------------------------------


def test_real_cr_monochrome1_window_and_bad_spacing():
    path = pydicom_data_file("RG1_UNCI.dcm")
    with pytest.warns(UserWarning, match=r"RG1_UNCI\.dcm.*spacing"):
        image = read_image(path)
    assert isinstance(image, LoadedImage)
    assert image.pixels.shape == (1955, 1841) and image.pixels.dtype == np.float32
    assert image.spacing is None  # PixelSpacing is 0.000\0.000 in this real file
    assert image.source == "dicom" and image.path == path
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0

    # Window 15000/30000 (linear), then MONOCHROME1 inversion: low stored value -> bright.
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = 1.0 - np.clip((stored - 14999.5) / 29999.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)
    darkest_stored = np.unravel_index(np.argmin(stored), stored.shape)
    assert image.pixels[darkest_stored] == pytest.approx(image.pixels.max())


@pytest.mark.filterwarnings("ignore:.*unusable pixel spacing")
def test_real_cr_jpeg2000_matches_uncompressed_or_names_missing_decoder():
    reference = read_image(pydicom_data_file("RG1_UNCR.dcm")).pixels
    compressed_path = pydicom_data_file("RG1_J2KR.dcm")
    if features.check("jpg_2000"):
        lossless = read_image(compressed_path).pixels
        np.testing.assert_array_equal(lossless, reference)
    else:
        with pytest.raises(ImageReadError, match="no decoder installed"):
            read_image(compressed_path)


def test_transfer_syntax_without_decoder_says_so():
    path = pydicom_data_file("JPEG-LL.dcm")
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    decodable = any(
        h.supports_transfer_syntax(syntax) and h.is_available()
        for h in pydicom.config.pixel_data_handlers
    )
    if decodable:
        assert read_image(path).pixels.ndim == 2
    else:
        with pytest.raises(ImageReadError, match=r"no decoder installed.*JPEG Lossless.*pylibjpeg"):
            read_image(path)


def test_voi_lut_table_and_ybr_colour_from_pydicom_data():
    from pydicom.pixel_data_handlers.util import apply_voi_lut

    path = pydicom_data_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    table = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    looked_up = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    expected = (looked_up - table.min()) / (table.max() - table.min())
    np.testing.assert_allclose(read_image(path).pixels, expected, atol=1e-6)

    rgb = read_image(pydicom_data_file("SC_rgb.dcm"))
    ybr = read_image(pydicom_data_file("SC_ybr_full_uncompressed.dcm"))
    assert rgb.pixels.shape == (100, 100, 3) and rgb.spacing == (1.0, 1.0)
    np.testing.assert_allclose(rgb.pixels[0, 0], [1.0, 0.0, 0.0])  # a red stripe
    difference = np.abs(ybr.pixels - rgb.pixels)  # YCbCr converted to RGB (8-bit rounding)
    assert difference.mean() < 1 / 255 and difference.max() < 8 / 255


# --------------------------------------------------------------------------------------------
# Synthetic DICOM: LUTs, photometry, spacing, errors
# --------------------------------------------------------------------------------------------


def test_dicom_rescale_then_window(tmp_path):
    stored = ramp()
    path = write_dicom(
        tmp_path / "ct.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1000,
        WindowWidth=2001,
        PixelSpacing=[0.2, 0.3],
    )
    image = read_image(path)
    values = stored * 2.0 - 1000.0
    expected = np.clip((values - 999.5) / 2000.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.spacing == (0.2, 0.3)


@pytest.mark.parametrize(
    "function, expected",
    [
        ("LINEAR_EXACT", lambda v: np.clip((v - 1000) / 500 + 0.5, 0, 1)),
        ("SIGMOID", lambda v: 1 / (1 + np.exp(-4 * (v - 1000) / 500))),
    ],
)
def test_dicom_voi_lut_functions(tmp_path, function, expected):
    stored = ramp()
    path = write_dicom(
        tmp_path / "f.dcm", stored, WindowCenter=1000, WindowWidth=500, VOILUTFunction=function
    )
    np.testing.assert_allclose(read_image(path).pixels, expected(stored.astype(float)), atol=1e-6)


def test_dicom_multivalued_window_uses_first_pair(tmp_path):
    stored = ramp()
    path = write_dicom(tmp_path / "w.dcm", stored, WindowCenter=[100, 3000], WindowWidth=[201, 50])
    expected = np.clip((stored - 99.5) / 200.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(read_image(path).pixels, expected, atol=1e-6)


def test_dicom_without_window_is_stretched_and_monochrome1_inverted(tmp_path):
    stored = ramp(top=1000)
    path = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=16)
    pixels = read_image(path).pixels
    # Percentile stretch (not the 16-bit range, which would leave values below 0.02).
    low, high = np.percentile(stored, [0.5, 99.5])
    expected = 1.0 - np.clip((stored - low) / (high - low), 0.0, 1.0)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    assert pixels[0, 0] == 1.0 and pixels[-1, -1] == 0.0


def test_dicom_spacing_falls_back_to_imager_pixel_spacing(tmp_path, recwarn):
    path = write_dicom(
        tmp_path / "dx.dcm", ramp(), PixelSpacing=[0, 0], ImagerPixelSpacing=[0.143, 0.144]
    )
    assert read_image(path).spacing == (0.143, 0.144)
    assert not [w for w in recwarn if "spacing" in str(w.message)]


def test_dicom_without_preamble_reads(tmp_path):
    path = write_dicom(tmp_path / "raw.dcm", ramp(), preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert read_image(path).pixels.shape == (40, 60)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: write_dicom(p, np.zeros((3, 20, 20))), "3 frames"),
        (lambda p: write_dicom(p, np.zeros((1, 1))), r"1x1 pixels.*at least 16"),
        (lambda p: write_dicom(p, np.zeros((8, 300))), r"8x300 pixels.*at least 16"),
        (lambda p: p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10"), "DICOM"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), "not a DICOM file"),
    ],
    ids=["multiframe", "1x1", "thin", "header-only", "random-bytes"],
)
def test_dicom_errors(tmp_path, make, match):
    path = tmp_path / "bad.dcm"
    make(path)
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", ramp())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(path)


def test_truncated_dicom(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", ramp(200, 200))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30_000])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------


def test_png_8_and_16_bit_grayscale(tmp_path):
    eight = (np.arange(40 * 50) % 256).reshape(40, 50).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "g8.png")
    image = read_image(tmp_path / "g8.png")
    assert image.pixels.shape == (40, 50) and image.source == "png" and image.spacing is None
    np.testing.assert_allclose(image.pixels, eight / 255.0, atol=1e-7)

    sixteen = (np.arange(40 * 50) * 30).reshape(40, 50).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    np.testing.assert_allclose(read_image(tmp_path / "g16.png").pixels, sixteen / 65535.0, atol=1e-7)


def test_png_color_modes(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (30, 40, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pixels = read_image(tmp_path / "rgba.png").pixels
    assert pixels.shape == (30, 40, 3)
    np.testing.assert_allclose(pixels, rgb / 255.0, atol=1e-7)  # alpha dropped, colour kept

    gray = rgb[..., 0]
    Image.fromarray(np.stack([gray, gray], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png").pixels, gray / 255.0, atol=1e-7)

    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")  # grayscale palette stays 2D
    assert read_image(tmp_path / "p.png").pixels.shape == (30, 40)


def test_jpeg_gray_stays_2d_and_color_is_rgb(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 64), (48, 1)).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "g.jpg", quality=95)
    image = read_image(tmp_path / "g.jpg")
    assert image.pixels.shape == (48, 64) and image.source == "jpeg"
    assert np.abs(image.pixels - smooth / 255.0).max() < 0.05

    Image.fromarray(np.stack([smooth] * 3, -1)).save(tmp_path / "c.jpeg")
    assert read_image(tmp_path / "c.jpeg").pixels.shape == (48, 64, 3)


def test_to_grayscale():
    rgb = np.zeros((20, 20, 3), np.float32)
    rgb[..., 1] = 1.0
    np.testing.assert_allclose(to_grayscale(rgb), 0.587, atol=1e-6)
    gray = np.ones((20, 20), np.float32)
    assert to_grayscale(gray) is gray


# --------------------------------------------------------------------------------------------
# NIfTI and .npy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_nifti_2d_orientation_and_spacing(tmp_path, name):
    picture = np.zeros((30, 50), np.float32)  # [H, W] as a viewer shows it
    picture[5, 40] = 1.0  # a marker near the top right
    affine = np.diag([0.5, 0.25, 1.0, 1.0])  # column spacing 0.5 mm, row spacing 0.25 mm
    nib.save(nib.Nifti1Image(picture.T[:, :, None], affine), tmp_path / name)  # [X, Y, 1]
    image = read_image(tmp_path / name)
    assert image.source == "nifti"
    np.testing.assert_array_equal(image.pixels, picture)
    assert image.spacing == (0.25, 0.5)


def test_nifti_volume_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 4), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(ImageReadError, match=r"\(30, 30, 4\).*more than one slice"):
        read_image(tmp_path / "v.nii.gz")


def test_npy_reads_and_scales(tmp_path):
    unit = np.linspace(0, 1, 32 * 20, dtype=np.float32).reshape(32, 20)
    np.save(tmp_path / "unit.npy", unit)
    image = read_image(tmp_path / "unit.npy")
    assert image.source == "npy"
    np.testing.assert_array_equal(image.pixels, unit)

    np.save(tmp_path / "u16.npy", (unit * 3000).astype(np.uint16))
    stretched = read_image(tmp_path / "u16.npy").pixels
    assert stretched.min() == 0.0 and stretched.max() == 1.0

    np.save(tmp_path / "vol.npy", np.zeros((5, 32, 32), np.float32))
    with pytest.raises(ImageReadError, match="more than one slice"):
        read_image(tmp_path / "vol.npy")


# --------------------------------------------------------------------------------------------
# Generic errors and size limits
# --------------------------------------------------------------------------------------------


def test_file_level_errors(tmp_path):
    cases = {
        tmp_path / "missing.png": "does not exist",
        tmp_path: "is a directory",
    }
    (tmp_path / "empty.png").write_bytes(b"")
    cases[tmp_path / "empty.png"] = "empty"
    (tmp_path / "notes.png").write_text("not an image at all")
    cases[tmp_path / "notes.png"] = "unrecognised or corrupt"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    cases[tmp_path / "cut.png"] = "truncated or corrupt"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:200])
    cases[tmp_path / "cut.jpg"] = "jpeg"
    for path, match in cases.items():
        with pytest.raises(ImageReadError, match=match) as info:
            read_image(path)
        assert isinstance(info.value, AFLocError) and info.value.path == str(path)


def test_tiny_png_is_refused(tmp_path):
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(ImageReadError, match=r"1x1 pixels; at least 16"):
        read_image(tmp_path / "dot.png")


def test_side_limit_is_the_module_constant(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 120), np.uint8)).save(tmp_path / "wide.png")
    assert read_image(tmp_path / "wide.png").pixels.shape == (20, 120)
    monkeypatch.setattr(imaging, "MAX_IMAGE_SIDE", 100)
    with pytest.raises(ImageReadError, match=r"20x120 pixels; the limit is 100 pixels a side"):
        read_image(tmp_path / "wide.png")


def test_huge_images_are_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("L", (imaging.MAX_IMAGE_SIDE + 1, 16)).save(tmp_path / "long.png")
    with pytest.raises(ImageReadError, match=r"16x16385 pixels; the limit is 16384"):
        read_image(tmp_path / "long.png")
    # A sparse .npy whose header alone says 16384 x 16384: refused from the header, without
    # reading its 268 MB, by the pixel limit (8192 x 8192 by default).
    np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=(16384, 16384)).flush()
    with pytest.raises(ImageReadError, match=r"268435456 pixels; the limit is 67108864 pixels"):
        read_image(tmp_path / "big.npy")
    # Within the pixel limit, but 8 bytes a pixel: refused by the decoded-size limit.
    np.lib.format.open_memmap(tmp_path / "wide.npy", mode="w+", dtype=np.float64, shape=(6000, 6000)).flush()
    with pytest.raises(ImageReadError, match=r"288000000 bytes; the limit is 268435456 bytes"):
        read_image(tmp_path / "wide.npy")


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path):
    """A small deflated DICOM whose dataset inflates past the limit never reaches pydicom's inflate."""
    import tracemalloc
    import zlib

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta.ImplementationClassUID = "1.2.3.4.5"
    ds = Dataset()
    ds.file_meta = meta
    # Explicit VR little endian: (0010,0010) PN, then an OB element of 300 MB of zeros, deflated.
    body = b"\x10\x00\x10\x00PN\x04\x00TEST" + b"\xe0\x7f\x10\x00OB\x00\x00" + (300 << 20).to_bytes(4, "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(body) + b"".join(packer.compress(bytes(1 << 20)) for _ in range(300)) + packer.flush()
    path = tmp_path / "bomb.dcm"
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(handle, meta)
        handle.write(deflated)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=r"inflates to more than"):
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak} bytes while refusing"


def test_imaging_does_not_import_torch():
    code = "import sys, afloc_models.imaging; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Letterbox
# --------------------------------------------------------------------------------------------


def test_letterbox_geometry_and_padding():
    pixels = np.full((300, 500), 0.7, np.float32)
    square, box = letterbox(pixels, 224)
    assert square.shape == (224, 224) and square.dtype == np.float32
    assert box == Letterbox((300, 500), 224, (134, 224), 45, 0, 224 / 500)
    assert np.all(square[:45] == 0) and np.all(square[45 + 134 :] == 0)
    np.testing.assert_allclose(square[45 : 45 + 134], 0.7, atol=1e-5)

    rgb, rgb_box = letterbox(np.ones((500, 300, 3), np.float32), 224)
    assert rgb.shape == (224, 224, 3) and rgb_box.pad_left == 45 and rgb_box.pad_top == 0


@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (301, 499)])
@pytest.mark.parametrize("map_side", [224, 56])
def test_letterbox_round_trip_puts_a_blob_back_in_place(shape, map_side):
    height, width = shape
    centre = (height * 0.3, width * 0.65)
    original = blob(height, width, centre, radius=40)
    square, box = letterbox(original, 224)
    if map_side != 224:  # a coarser map of the same square, e.g. a patch grid
        factor = 224 // map_side
        square = square.reshape(map_side, factor, map_side, factor).mean(axis=(1, 3))
    back = box.to_original(square)
    assert back.shape == (height, width) and back.dtype == np.float32
    recovered = back > 0.5
    assert mask_iou(recovered, original > 0.5) > 0.95
    # Measured error is under 0.1 px; half a pixel of misregistration in the square would
    # already move it by about 1 px.
    assert np.abs(centroid(recovered) - centroid(original > 0.5)).max() < 0.5


def test_letterbox_identity_when_size_matches():
    pixels = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    square, box = letterbox(pixels, 64)
    np.testing.assert_array_equal(square, pixels)
    np.testing.assert_allclose(box.to_original(square), pixels, atol=1e-6)


def test_letterbox_boxes_round_trip():
    _, box = letterbox(np.zeros((300, 500), np.float32), 224)
    original_box = (100.0, 30.0, 260.0, 120.0)
    in_square = box.box_from_original(original_box)
    assert in_square[1] == pytest.approx(45 + 30 * 134 / 300)
    np.testing.assert_allclose(box.box_to_original(in_square), original_box, atol=1e-9)
    on_grid = tuple(v / 4 for v in in_square)  # the same box on a 56 x 56 map
    np.testing.assert_allclose(box.box_to_original(on_grid, map_size=56), original_box, atol=1e-9)
    # Boxes reaching into the padding are clipped to the image.
    assert box.box_to_original((0, 0, 224, 224)) == (0.0, 0.0, 500.0, 300.0)


def test_letterbox_rejects_bad_input():
    with pytest.raises(ValueError):
        letterbox(np.zeros((2, 3, 4, 5)), 32)
    with pytest.raises(ValueError):
        letterbox(np.zeros((20, 30)), 0)
    _, box = letterbox(np.zeros((20, 30)), 32)
    with pytest.raises(ValueError):
        box.to_original(np.zeros(5))


def test_jpeg_draft_decoding_covers_the_requested_side(tmp_path):
    """Training's fast JPEG path: a smaller DCT scale, never below the letterbox side, same content."""
    from PIL import Image

    from afloc_models.imaging import read_image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 1200, dtype=np.float32)[None, :] + rng.random((1000, 1200)) * 40
    path = tmp_path / "big.jpg"
    Image.fromarray(ramp.astype(np.uint8)).save(path, "JPEG", quality=90)
    full = read_image(path).pixels
    small = read_image(path, jpeg_min_side=240).pixels
    assert full.shape == (1000, 1200)
    assert small.shape == (250, 300)  # 1/4 scale: the largest reduction keeping both sides >= 240
    assert read_image(path, jpeg_min_side=256).pixels.shape == (500, 600)  # 1/4 would be 250 < 256
    assert read_image(path, jpeg_min_side=600).pixels.shape == (1000, 1200)  # 1/2 would be 500 < 600
    assert abs(float(full.mean()) - float(small.mean())) < 0.005
    # Column means follow the same ramp at both scales.
    cols_full = full.mean(axis=0).reshape(300, 4).mean(axis=1)
    assert np.corrcoef(cols_full, small.mean(axis=0))[0, 1] > 0.99
    # Non-JPEG files ignore the hint.
    png = tmp_path / "big.png"
    Image.fromarray(ramp.astype(np.uint8)).save(png)
    assert read_image(png, jpeg_min_side=256).pixels.shape == (1000, 1200)
