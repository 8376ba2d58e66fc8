"""Decoding product photos into the network's input: 224x224 RGB, float32 in 0..255.

With their default arguments :func:`load_image` and :func:`decode_rgb8` give the pixels the original notebooks
fed VGG16 (``keras.utils.load_img(path, target_size=(224, 224))``: RGB, squashed to the target size with
nearest-neighbour resampling); a :class:`Preprocessing` names another filter or padding to a square on
white (measured in docs/quality.md; the notebooks' pixels remain the default). All of them add what real
shop catalogues need: EXIF orientation, transparent cut-outs on white, 16-bit and exotic colour modes,
animated files and large JPEGs decoded at reduced size. Every failure is an
:class:`~imgsearch.errors.ImageError` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgsearch.errors import ImageError, InvalidQueryError

#: File extensions (lowercase, with the dot) that directory scans treat as images. Decoding itself never
#: looks at the extension: the content decides.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

#: Largest image file read (bytes): far above any product photo, far below what would exhaust memory.
MAX_FILE_BYTES = 100 * 2**20

#: Side of the square image VGG16 takes.
TARGET_SIZE = 224


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the network's input, and the version string that identifies it.

    The input is a ``size`` square (``fit`` ``squash`` or ``pad``) or, with ``fit="keep"``, the photo with its
    aspect ratio kept and its longer side ``size``. The version is stored with every catalogue so that vectors
    made from differently prepared pixels are never mixed: a new way of preparing pixels must get a new version.
    """

    version: str
    size: int = TARGET_SIZE
    resample: str = "nearest"
    fit: str = "squash"

    def decode(self, source: ImageSource, crop: Crop | None = None) -> np.ndarray:
        """uint8 RGB pixels of ``source`` (or of its ``crop`` box): ``(size, size, 3)``, or ``(h, w, 3)`` with
        ``max(h, w) == size`` for ``fit="keep"`` (see :func:`decode_rgb8`)."""
        return decode_rgb8(source, self.size, resample=self.resample, fit=self.fit, crop=crop)


#: The original notebooks' pixels (also what ``load_image(path)`` gives): squashed, nearest neighbour.
NOTEBOOK_PREPROCESSING = Preprocessing("v1-exif-white-squash224-nearest-jpegdraft")

#: The pixels the featurizer uses by default: still the notebooks' ones, since bicubic resampling and padding
#: to a square on white measured no better on either test set (docs/quality.md).
DEFAULT_PREPROCESSING = NOTEBOOK_PREPROCESSING

#: Version of everything around the network in the default pipeline, recorded with new catalogues: the
#: notebooks' pixels, then the global average of ``block5_conv3`` (instead of ``block5_pool``) and an
#: element-wise square root before L2 normalisation (:data:`imgsearch.embedding.DEFAULT_PIPELINE`). Its
#: vectors differ from v1 ones, so a v1 catalogue is refused with a request to re-ingest.
PREPROCESSING_VERSION: str = "v2-exif-white-squash224-nearest-jpegdraft-conv3avg-sqrt"

#: The pixels of the ``rmac`` pipeline (:data:`imgsearch.embedding.RMAC_PIPELINE`): the photo with its aspect ratio
#: kept, bicubic, longer side 320; not a square, so VGG16 sees the product undistorted and at more detail.
RMAC_PREPROCESSING = Preprocessing("v3-exif-white-keep320-bicubic-jpegdraft", size=320, resample="bicubic", fit="keep")

#: What :func:`load_image` accepts: a path, the encoded bytes, or a binary file object (e.g. stdin).
ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

#: How :func:`decode_rgb8` can bring a picture to the network's input size: to a square (``squash``, ``pad``) or
#: to a longer side of ``size`` with the aspect ratio kept (``keep``).
FITS = ("squash", "pad", "keep")

#: A box in a photo: ``(left, top, right, bottom)`` in pixels of the photo as it is shown (EXIF orientation
#: applied), right and bottom exclusive. Searches take one to look only at the part of a shopper's photo that
#: shows the product.
Crop = tuple[float, float, float, float]

# Pillow warns about recoverable oddities of corrupt files ("Truncated File Read", "Tag data larger than file")
# on stderr; a file it cannot decode is an ImageError with one line, one it can decode needs no comment.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
# ...and about a photo over its pixel limit, which _check_pixel_limit refuses with its own one line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})


def has_supported_extension(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` ends with one of :data:`SUPPORTED_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def describe_source(source: object) -> str:
    """A short human-readable name for an image source, used to prefix error messages."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        name = getattr(source, "name", None)
        return name if isinstance(name, str) else "<image bytes>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<image stream>"


def load_image(source: ImageSource, size: int = TARGET_SIZE) -> np.ndarray:
    """Decode one image into a ``(size, size, 3)`` float32 RGB array with values in 0..255.

    This is the input of ``keras.applications.vgg16.preprocess_input``, not yet preprocessed.

    Args:
        source: a path, the encoded file content as bytes, or a binary file object (read to the end).
        size: side of the square output; the image is squashed (aspect ratio not kept), like the notebooks.

    Raises:
        ImageError: the file is missing or empty, is not an image, is truncated or corrupt, or is so large
            that it could be a decompression bomb (more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels).
    """
    return decode_rgb8(source, size).astype(np.float32)


def decode_rgb8(
    source: ImageSource,
    size: int = TARGET_SIZE,
    *,
    resample: str = "nearest",
    fit: str = "squash",
    crop: Crop | None = None,
) -> np.ndarray:
    """Like :func:`load_image` but returns ``uint8``: a quarter of the memory for images queued for a batch.

    Args:
        source: as for :func:`load_image`.
        size: side of the square output.
        resample: Pillow resampling filter name: ``nearest``, ``bilinear``, ``bicubic``, ``lanczos``...
        fit: ``squash`` (resize to a square, aspect ratio not kept), ``pad`` (resize the longer side to
            ``size``, keep the aspect ratio and centre the picture on a white square) or ``keep`` (resize the
            longer side to ``size`` and keep the aspect ratio: an ``(h, w, 3)`` array, not a square).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    try:
        filter_ = Image.Resampling[resample.upper()]
    except KeyError:
        raise ValueError(f"unknown resampling filter {resample!r}") from None
    label = describe_source(source)
    with _decoding(source, label) as im:
        if crop is not None:
            return _fit(_to_rgb_array(_cropped(im, crop, size, label)), size, filter_, fit)
        _draft_for_target(im, size)
        im.load()
        if filter_ == Image.Resampling.NEAREST and fit == "squash":
            return _to_rgb_array(_squash(im, size))
        return _fit(_to_rgb_array(_upright(im)), size, filter_, fit)


def decode_within(source: ImageSource, max_side: int, *, crop: Crop | None = None) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB pixels with the aspect ratio kept and the longer side at most ``max_side``
    (never enlarged): what local features are computed on, where detail matters more than a fixed shape.

    Raises:
        ImageError: as :func:`load_image`, or ``crop`` lies outside the photo.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    label = describe_source(source)
    with _decoding(source, label) as im:
        if crop is not None:
            im = _cropped(im, crop, max_side, label)
        else:
            _draft_for_target(im, max_side)
            im.load()
            _upright(im)
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            new_size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
            im = im.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return _to_rgb_array(im)


class NamedBytes(bytes):
    """A photo's encoded bytes that remember what they were read from, for error messages."""

    name: str


def read_source(source: ImageSource) -> str | os.PathLike[str] | bytes:
    """A source that can be decoded several times, from several threads at once: a path as it is, a stream read
    once into bytes (at most :data:`MAX_FILE_BYTES`; errors still name the stream).

    Raises:
        ImageError: the stream cannot be read, is empty or is too large.
    """
    if isinstance(source, str | os.PathLike | bytes):
        return source
    label = describe_source(source)
    with _open_source(source, label) as stream:
        data = NamedBytes(stream.read())
    data.name = label
    return data


def photo_size(source: ImageSource) -> tuple[int, int]:
    """Width and height of a photo as it is shown (EXIF orientation applied), read from its header only."""
    label = describe_source(source)
    with _decoding(source, label) as im:
        width, height = im.size
        with contextlib.suppress(Exception):
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                width, height = height, width
        return width, height


def validate_crop(crop: Sequence[float] | None) -> Crop | None:
    """``crop`` as four finite numbers ``(left, top, right, bottom)`` with left < right and top < bottom.

    Raises:
        InvalidQueryError: anything else.
    """
    if crop is None:
        return None
    try:
        values = tuple(float(v) for v in crop)
    except (TypeError, ValueError):
        raise InvalidQueryError("crop must be four numbers: left, top, right, bottom") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InvalidQueryError("crop must be four finite numbers: left, top, right, bottom")
    left, top, right, bottom = values
    if left < 0 or top < 0 or left >= right or top >= bottom:
        raise InvalidQueryError("crop must have 0 <= left < right and 0 <= top < bottom (pixels of the photo)")
    return left, top, right, bottom


def parse_crop(text: str) -> Crop:
    """A crop written ``left,top,right,bottom`` (a command-line option, a form field), checked.

    Raises:
        InvalidQueryError: not four numbers, or not a box.
    """
    try:
        numbers = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise InvalidQueryError(f"{str(text)[:40]!r} is not four numbers left,top,right,bottom") from None
    crop = validate_crop(numbers)
    assert crop is not None
    return crop


def _cropped(im: Image.Image, crop: Crop, size: int, label: str) -> Image.Image:
    """The upright photo's ``crop`` box (see :data:`Crop`), decoded at a reduced scale when that keeps at least
    ``size`` pixels across the box."""
    left, top, right, bottom = validate_crop(crop)  # type: ignore[misc]
    full_w, full_h = im.size
    with contextlib.suppress(Exception):
        if im.getexif().get(0x0112) in (5, 6, 7, 8):
            full_w, full_h = full_h, full_w
    if right > full_w or bottom > full_h:
        raise ImageError(
            f"{label}: crop box {left:g},{top:g},{right:g},{bottom:g} lies outside the {full_w}x{full_h} photo"
        )
    # libjpeg's reduced decoding, as long as the box keeps at least ``size`` pixels on its shorter side.
    reduce = min((right - left) / size, (bottom - top) / size)
    if im.format == "JPEG" and reduce >= 2:
        im.draft(None, (max(1, round(full_w / reduce)), max(1, round(full_h / reduce))))
    im.load()
    _upright(im)
    sx, sy = im.size[0] / full_w, im.size[1] / full_h
    box = (
        int(np.floor(left * sx)),
        int(np.floor(top * sy)),
        max(int(np.floor(left * sx)) + 1, int(np.ceil(right * sx))),
        max(int(np.floor(top * sy)) + 1, int(np.ceil(bottom * sy))),
    )
    return im.crop(box)


@contextlib.contextmanager
def _decoding(source: ImageSource, label: str) -> Iterator[Image.Image]:
    """The opened photo, with every decoding failure turned into an :class:`ImageError` with one line."""
    fp = _open_source(source, label)
    try:
        with Image.open(fp) as im:
            _check_pixel_limit(im, label)
            yield im
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: image too large, possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image, or an unsupported image format") from None
    except (OSError, SyntaxError, EOFError) as exc:
        # Pillow reports truncation and most corrupt streams as OSError ("image file is truncated",
        # "broken data stream"), some plugins as SyntaxError/EOFError.
        raise ImageError(f"{label}: truncated or corrupt image data ({_one_line(exc)})") from None
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to decode the image") from None
    except Exception as exc:
        # Corrupt files make some Pillow plugins fail with arbitrary exceptions (IndexError, ValueError,
        # struct.error...). A catalogue run must be able to report them per file and carry on.
        raise ImageError(f"{label}: cannot decode image ({type(exc).__name__}: {_one_line(exc)})") from None
    finally:
        fp.close()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's content, read in chunks so large files do not sit in memory."""
    label = os.fspath(path)
    with _open_file(path, label) as f:
        try:
            return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise ImageError(f"{label}: cannot read file ({_one_line(exc)})") from None


def _open_file(path: str | os.PathLike[str], label: str) -> BinaryIO:
    """Open ``path`` for binary reading, or raise :class:`ImageError` saying why it cannot be.

    Only regular files of at most :data:`MAX_FILE_BYTES` are read. The file is opened without blocking and
    checked before anything is read, so a FIFO (which would wait for a writer forever), a device such as
    ``/dev/zero`` (endless) or a socket in a catalogue folder is one error, not a hang.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"{label}: symbolic link loop") from None
        raise ImageError(f"{label}: cannot open file ({_one_line(exc)})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{label}: is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{label}: not a regular file (a FIFO, device or socket), not read")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(f"{label}: file too large ({info.st_size} bytes, limit {MAX_FILE_BYTES})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _open_source(source: ImageSource, label: str) -> BinaryIO:
    """Return a binary stream positioned at the start of the encoded image; the caller closes it."""
    if isinstance(source, str | os.PathLike):
        f = _open_file(source, label)  # closed by the caller, after Pillow is done with it
        try:
            empty = os.fstat(f.fileno()).st_size == 0
        except OSError:
            empty = False
        if empty:
            f.close()
            raise ImageError(f"{label}: empty file")
        return f
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif hasattr(source, "read"):
        try:
            data = source.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ImageError(f"{label}: cannot read image stream ({_one_line(exc)})") from None
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"{label}: image stream must be opened in binary mode")
    else:
        raise TypeError(f"cannot read an image from a {type(source).__name__}")
    if not data:
        raise ImageError(f"{label}: empty image data")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{label}: image data too large (over {MAX_FILE_BYTES} bytes)")
    return io.BytesIO(data)


def _check_pixel_limit(im: Image.Image, label: str) -> None:
    # Pillow only raises above twice MAX_IMAGE_PIXELS and merely warns above it; a shop's photo that large
    # is not a product photo, so anything over the limit is refused.
    limit = Image.MAX_IMAGE_PIXELS
    width, height = im.size
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{label}: image too large ({width}x{height} = {width * height} pixels, limit {limit}), "
            "possible decompression bomb"
        )


def _draft_for_target(im: Image.Image, size: int) -> None:
    """Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale, never below ``size`` on either side.

    Only done when at least a 2x reduction is possible: draft() on a smaller image would not reduce anything
    but would still reconfigure the decoder, and photos around the target size must decode exactly as the
    notebooks decoded them.
    """
    if im.format == "JPEG" and min(im.size) >= 2 * size:
        im.draft(None, (size, size))


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation in place (a malformed EXIF block leaves the pixels as stored)."""
    # A malformed EXIF block should not cost the shop a product.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(im, in_place=True)
    return im


def _fit(rgb: np.ndarray, size: int, filter_: Image.Resampling, fit: str) -> np.ndarray:
    """Resize RGB pixels to a ``size`` square (squashed, or scaled to fit and centred on white), or (``keep``)
    to a longer side of ``size`` with the aspect ratio kept."""
    # Interpolating filters must see RGB: resizing a palette or alpha image first would blend indices or
    # un-composited colours, hence the conversion happens before, unlike the nearest-neighbour path.
    im = Image.fromarray(rgb)
    width, height = im.size
    if fit == "squash":
        return np.asarray(im.resize((size, size), filter_) if im.size != (size, size) else im)
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size != im.size:
        im = im.resize(new_size, filter_)
    if fit == "keep":
        return np.asarray(im)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return np.asarray(canvas)


def _squash(im: Image.Image, size: int) -> Image.Image:
    """Upright the image (EXIF orientation) and resize it to ``size`` x ``size`` with nearest neighbour."""
    # The orientation must be applied before squashing: it decides which side gets compressed.
    _upright(im)
    if im.size == (size, size):
        return im
    # Nearest neighbour only picks pixels, so resizing before the colour conversion gives the same pixels
    # as converting first (what keras' load_img does) while converting far fewer of them.
    return im.resize((size, size), Image.Resampling.NEAREST)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an ``(h, w, 3)`` uint8 RGB array; transparency is composited on white."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(np.asarray(im).astype(np.float64) / 257.0)
    if mode == "I":
        gray = np.asarray(im).astype(np.float64)
        # 32-bit integer images mostly hold 16-bit samples (old Pillow PNGs, scientific TIFFs); an image
        # whose values all fit in 8 bits is taken as 8-bit.
        return _gray_to_rgb(gray / 257.0 if gray.max(initial=0) > 255 else gray)
    if mode == "F":
        gray = np.nan_to_num(np.asarray(im).astype(np.float64))
        # Float images are conventionally 0..1; anything else is taken as already 0..255.
        if gray.size and gray.min() >= 0.0 and gray.max() <= 1.0:
            gray = gray * 255.0
        return _gray_to_rgb(gray)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray8[:, :, np.newaxis], 3, axis=2)
