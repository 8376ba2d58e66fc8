"""Decoding product photos into the network's 224x224 RGB input, on real photos and hostile files."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, features

from imgsearch.errors import ImageError
from imgsearch.images import (
    PREPROCESSING_VERSION,
    SUPPORTED_EXTENSIONS,
    decode_rgb8,
    file_sha256,
    has_supported_extension,
    load_image,
)

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTO = SAMPLES / "dress" / "07cddef1-1fc8-47e4-a28a-613e60912590.jpg"


def sample_photos() -> list[Path]:
    return sorted(SAMPLES.glob("*/*.jpg"))


@pytest.fixture(scope="module")
def upright() -> Image.Image:
    """A real product photo, decoded once, in RGB."""
    with Image.open(PHOTO) as im:
        return im.convert("RGB")


def squashed(im: Image.Image) -> np.ndarray:
    """The reference pipeline: RGB, squashed to 224x224 with nearest neighbour (the notebooks' load_img)."""
    return np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.NEAREST), dtype=np.float32)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture
def draft_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Records the size of every JPEG decoded through Pillow's draft mode."""
    calls: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        result = original(self, mode, size)
        calls.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    yield calls


def test_samples_decode_exactly_like_the_notebooks() -> None:
    # The original notebooks used keras' load_img(target_size=(224, 224)); catalogue photos (400 px short side)
    # must give bit-identical input, so vectors stay comparable with the original experiments.
    import keras

    for path in sample_photos()[::12]:
        expected = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224)))
        got = load_image(path)
        assert got.dtype == np.float32
        assert got.shape == (224, 224, 3)
        np.testing.assert_array_equal(got, expected, err_msg=str(path))


@pytest.mark.parametrize(
    ("fmt", "suffix", "lossless"),
    [
        ("JPEG", ".jpg", False),
        ("PNG", ".png", True),
        ("WEBP", ".webp", False),
        ("GIF", ".gif", False),
        ("BMP", ".bmp", True),
        ("TIFF", ".tif", True),
    ],
)
def test_every_supported_format_loads(
    fmt: str, suffix: str, lossless: bool, upright: Image.Image, tmp_path: Path
) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.fail("this Pillow build cannot read WebP, which shops use a lot")
    path = tmp_path / f"photo{suffix}"
    upright.save(path, fmt)
    assert has_supported_extension(path)

    got = load_image(path)

    assert got.shape == (224, 224, 3)
    assert got.dtype == np.float32
    assert got.min() >= 0.0 and got.max() <= 255.0
    reference = squashed(upright)
    if lossless:
        np.testing.assert_array_equal(got, reference)
    else:
        # Lossy re-encoding (GIF: 256 colours) changes pixels a little, not the picture.
        assert mean_abs_diff(got, reference) < 12


def test_supported_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} == SUPPORTED_EXTENSIONS
    assert has_supported_extension("SHOE.JPG")
    assert has_supported_extension(Path("a/b.TiFf"))
    assert not has_supported_extension("notes.txt")
    assert not has_supported_extension("jpg")


def test_preprocessing_version_is_a_short_identifier() -> None:
    assert PREPROCESSING_VERSION.startswith("v")
    assert len(PREPROCESSING_VERSION) <= 64
    assert PREPROCESSING_VERSION.strip() == PREPROCESSING_VERSION


@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),  # camera held sideways: viewers rotate 90 degrees clockwise
        (8, Image.Transpose.ROTATE_270),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, stored_as: Image.Transpose, upright: Image.Image, tmp_path: Path
) -> None:
    straight = tmp_path / "upright.jpg"
    upright.save(straight, "JPEG", quality=95)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(stored_as).save(rotated, "JPEG", quality=95, exif=exif)

    got = load_image(rotated)

    # Not bit-identical: JPEG-compressing the rotated pixels gives slightly different pixels.
    assert mean_abs_diff(got, load_image(straight)) < 3
    with Image.open(rotated) as raw:
        assert mean_abs_diff(got, squashed(raw)) > 10, "orientation tag was ignored"


def test_transparent_cutout_is_composited_on_white(upright: Image.Image, tmp_path: Path) -> None:
    # A typical shop cut-out: the product opaque, the background fully transparent. The transparent pixels
    # hold black here, which is what a decoder that drops alpha would show.
    width, height = upright.size
    alpha = Image.new("L", upright.size, 0)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    alpha.paste(255, box)
    cutout = Image.new("RGB", upright.size, (0, 0, 0))
    cutout.paste(upright.crop(box), box[:2])
    cutout.putalpha(alpha)
    path = tmp_path / "cutout.png"
    cutout.save(path)

    got = load_image(path)

    assert (got[:40, :40] == 255).all()
    assert (got[-40:, -40:] == 255).all()
    reference = squashed(cutout.convert("RGB"))
    np.testing.assert_array_equal(got[80:140, 80:140], reference[80:140, 80:140])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_semi_transparent_pixels_blend_with_white(fmt: str, tmp_path: Path) -> None:
    im = Image.new("RGBA", (300, 300), (0, 0, 0, 128))
    im.paste((200, 0, 0, 255), (100, 100, 200, 200))
    path = tmp_path / f"glass.{fmt.lower()}"
    im.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))

    got = load_image(path)

    np.testing.assert_allclose(got[10, 10], [127, 127, 127], atol=1)
    np.testing.assert_array_equal(got[112, 112], [200, 0, 0])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str, tmp_path: Path) -> None:
    im = Image.new("P", (240, 240), 0)
    im.putpalette([0, 0, 0, 20, 40, 200] + [0, 0, 0] * 254)
    im.paste(1, (60, 60, 180, 180))
    path = tmp_path / f"logo.{fmt.lower()}"
    im.save(path, fmt, transparency=0)

    got = load_image(path)

    np.testing.assert_array_equal(got[5, 5], [255, 255, 255])
    np.testing.assert_array_equal(got[112, 112], [20, 40, 200])


def test_cmyk_jpeg_gives_the_same_picture(upright: Image.Image, tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    upright.convert("CMYK").save(path, "JPEG", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"

    assert mean_abs_diff(load_image(path), squashed(upright)) < 4


def test_grayscale_gives_three_equal_channels(upright: Image.Image, tmp_path: Path) -> None:
    gray = upright.convert("L")
    path = tmp_path / "gray.png"
    gray.save(path)

    got = load_image(path)

    expected = np.asarray(gray.resize((224, 224), Image.Resampling.NEAREST), dtype=np.float32)
    for channel in range(3):
        np.testing.assert_array_equal(got[:, :, channel], expected)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(fmt: str, tmp_path: Path) -> None:
    # Left half mid-grey, right half a ramp over the whole 16-bit range.
    samples = np.full((224, 224), 32768, dtype=np.uint16)
    samples[:, 112:] = np.linspace(0, 65535, 112, dtype=np.uint16)[np.newaxis, :]
    path = tmp_path / f"scan16.{fmt.lower()}"
    Image.fromarray(samples).save(path, fmt)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")

    got = load_image(path)

    assert got[:, :112].min() == got[:, :112].max() == 128
    ramp = got[0, 112:, 0]
    assert ramp[0] == 0 and ramp[-1] == 255
    assert (np.diff(ramp) >= 0).all()


def test_animated_gif_uses_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (260, 260), color) for color in [(220, 30, 30), (30, 220, 30), (30, 30, 220)]]
    path = tmp_path / "spin.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3

    got = load_image(path)

    np.testing.assert_allclose(got.reshape(-1, 3).mean(axis=0), [220, 30, 30], atol=3)


def test_large_jpeg_is_decoded_in_draft_mode_and_close_to_full_decode(
    upright: Image.Image, tmp_path: Path, draft_calls: list[tuple[int, int]]
) -> None:
    path = tmp_path / "camera.jpg"
    upright.resize((3000, 4000), Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)

    got = load_image(path)

    # libjpeg decoded at 1/8 scale: 375x500, still more than 224 on both sides.
    assert draft_calls == [(375, 500)]
    with Image.open(path) as full:
        full_decode = squashed(full)
    assert got.shape == (224, 224, 3)
    assert mean_abs_diff(got, full_decode) < 4


@pytest.mark.parametrize(("size", "drafted"), [((447, 900), False), ((448, 460), True)])
def test_draft_only_when_it_halves_the_image(
    size: tuple[int, int], drafted: bool, upright: Image.Image, tmp_path: Path, draft_calls: list[tuple[int, int]]
) -> None:
    path = tmp_path / "edge.jpg"
    upright.resize(size).save(path, "JPEG", quality=90)

    got = load_image(path)

    assert bool(draft_calls) is drafted
    if not drafted:
        with Image.open(path) as full:
            np.testing.assert_array_equal(got, squashed(full))
    else:
        assert min(draft_calls[0]) >= 224


def test_bytes_and_streams_decode_like_the_file() -> None:
    data = PHOTO.read_bytes()
    expected = load_image(PHOTO)

    np.testing.assert_array_equal(load_image(data), expected)
    np.testing.assert_array_equal(load_image(io.BytesIO(data)), expected)
    # stdin is a pipe: not seekable.
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_fd, data), os.close(write_fd)))
    writer.start()
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        np.testing.assert_array_equal(load_image(pipe), expected)
    writer.join()


def test_decode_rgb8_is_the_uint8_version() -> None:
    got = decode_rgb8(PHOTO)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got.astype(np.float32), load_image(PHOTO))


# --- errors ---------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.jpg"
    with pytest.raises(ImageError, match=r"gone\.jpg: file not found"):
        load_image(missing)


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(ImageError, match="empty file"):
        load_image(empty)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    fake = tmp_path / "photo.jpg"
    fake.write_text("sku,name\n1,shoe\n")
    with pytest.raises(ImageError, match=r"photo\.jpg: not an image"):
        load_image(fake)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_jpeg_is_an_error_not_grey(keep: float, tmp_path: Path) -> None:
    data = PHOTO.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated or corrupt"):
        load_image(cut)


def test_truncated_png_is_an_error(upright: Image.Image, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    upright.save(buffer, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(cut)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [150_000, 50_000])
def test_decompression_bomb(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The photo has 400x534 = 213,600 pixels: above the limit (Pillow only warns) and above twice the limit
    # (Pillow raises) must both be refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(PHOTO)


def test_file_sha256(tmp_path: Path) -> None:
    assert file_sha256(PHOTO) == hashlib.sha256(PHOTO.read_bytes()).hexdigest()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    assert file_sha256(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    with pytest.raises(ImageError, match="file not found"):
        file_sha256(tmp_path / "nope.jpg")
