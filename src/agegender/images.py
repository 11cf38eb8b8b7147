"""Decoding: any supported input becomes an H x W x 3 uint8 RGB array.

EXIF orientation is applied, every Pillow mode (grayscale, alpha, 16-bit, palette,
CMYK) is converted, and the pixel limit is checked from the header before the pixels
are decoded, so a decompression bomb is refused without allocating it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .config import DEFAULT_PIXEL_LIMIT
from .errors import ImageError, ImageTooLargeError, UnsupportedImageError

ChannelOrder = Literal["RGB", "BGR"]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
    # phones' HEIF/HEIC (read through pillow-heif, the `heif` extra) and AVIF (Pillow's own)
    | {".heic", ".heif", ".hif", ".avif"}
)
# Videos (decoded by video.py, which imports OpenCV: kept here so that light modules such
# as batch.sources need not import it).
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg"}
    # phones' 3GPP, camcorders' AVCHD (MPEG-TS), Windows Media, Flash
    | {".3gp", ".3g2", ".mts", ".m2ts", ".wmv", ".flv"}
)


@dataclass(frozen=True)
class Frame:
    """A video frame (already decoded RGB), or the reason a video gave no frames."""

    path: str
    index: int
    time: float
    rgb: NDArray[np.uint8] | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}@{self.time:.3f}s"


ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | NDArray | Frame


@dataclass(frozen=True)
class DecodedImage:
    """An RGB uint8 image and the name it is reported under."""

    name: str
    rgb: NDArray[np.uint8]


def describe(source: ImageInput) -> str:
    """The name an input is reported under (its path, or a type description)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    if isinstance(source, Frame):
        return source.name
    if isinstance(source, np.ndarray):
        return "<array>"
    return f"<{type(source).__name__}>"


def load(
    source: ImageInput,
    *,
    channels: ChannelOrder = "RGB",
    pixel_limit: int | None = DEFAULT_PIXEL_LIMIT,
    name: str | None = None,
) -> DecodedImage:
    """Decode `source` into RGB; raise ImageError with a one-line reason otherwise.

    `channels` says how a numpy array is ordered (OpenCV arrays are BGR); it is
    ignored for files, bytes and PIL images, whose order is known.
    """
    label = name or describe(source)
    if isinstance(source, Frame):
        if source.rgb is None:
            raise ImageError(source.error or f"{source.path}: no frame")
        return DecodedImage(label, _from_array(source.rgb, "RGB", pixel_limit, label))
    if isinstance(source, np.ndarray):
        return DecodedImage(label, _from_array(source, channels, pixel_limit, label))
    if isinstance(source, Image.Image):
        with _one_reader(source):
            return DecodedImage(label, _from_pil(source, pixel_limit, label))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_file(path, label, pixel_limit)
        data = _read_file(path, label)
    else:
        raise ImageError(f"{label}: unsupported input type {type(source).__name__}")
    return DecodedImage(label, decode_bytes(data, pixel_limit=pixel_limit, name=label))


# A caller's PIL image may be read by several threads at once: given twice to one
# predict_many (its workers decode in parallel) or to threads sharing an Estimator. Pillow
# loads an opened image from its file when first used, which is not safe from two threads
# at once (wrong pixels, AssertionError), so one image is read by one thread at a time;
# different images still load in parallel. A lock per image object, counted.
_READERS_LOCK = threading.Lock()
_readers: dict[int, tuple[threading.Lock, int]] = {}  # id(image): its lock, threads using it


@contextlib.contextmanager
def _one_reader(image: Image.Image) -> Iterator[None]:
    key = id(image)  # the caller holds the image meanwhile, so the id is not reused
    with _READERS_LOCK:
        lock, users = _readers.get(key, (threading.Lock(), 0))
        _readers[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _READERS_LOCK:
            lock, users = _readers[key]
            if users == 1:
                del _readers[key]
            else:
                _readers[key] = (lock, users - 1)


# A file is read whole to be decoded. One larger than this is first identified from its
# header (Pillow reads only what it needs), so that a video, an archive or a disk image
# named on the command line is refused without being read into memory, and so is an image
# whose header states more pixels than the limit.
IDENTIFY_ABOVE_BYTES = 16 * 2**20

NOT_REGULAR = "not a regular file (a pipe, a device or a socket)"


def _check_file(path: Path, label: str, pixel_limit: int | None) -> None:
    """Before a file is read whole: refuse a pipe or a device (opening a pipe waits for a
    writer; /dev/zero reads without end), and identify a large file from its header. A
    file that cannot be looked at is left to _read_file, which says why."""
    try:
        found = os.stat(path)
        if stat.S_ISDIR(found.st_mode):
            return
        if not stat.S_ISREG(found.st_mode):
            raise ImageError(f"{label}: {NOT_REGULAR}")
        if found.st_size > IDENTIFY_ABOVE_BYTES:
            with open(path, "rb") as file:
                _identify(file, label, pixel_limit)
    except OSError:
        return


def _read_file(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied") from None
    except OSError as error:
        raise ImageError(f"{label}: cannot read ({error.strerror or error})") from None


def _identify(file: Any, label: str, pixel_limit: int | None) -> None:
    """Refuse a large file that is not an image, or whose header states more pixels than
    the limit, from its header alone. What Pillow cannot tell from the header (an icon,
    which it decodes while opening; HEIF and AVIF, whose plugin decode_bytes registers and
    whose declared sizes it checks; a damaged header) is left to decode_bytes."""
    head = file.read(16)
    file.seek(0)
    if head[:4] == _ICO_MAGIC or head[4:8] == b"ftyp":
        return
    try:
        with _bomb_warning_ignored(), _pillow_guard_lifted():
            image = Image.open(file)
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"{label}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError):
        return  # decode_bytes gives the reason
    _check_pixels(image.width, image.height, pixel_limit, label)


def decode_bytes(
    data: bytes, *, pixel_limit: int | None = DEFAULT_PIXEL_LIMIT, name: str = "<bytes>"
) -> NDArray[np.uint8]:
    """Decode encoded image bytes (JPEG, PNG, ...) into RGB."""
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        # Pillow's own bomb check warns or raises at its limit; ours is explicit.
        with _bomb_warning_ignored():
            if data[:4] == _ICO_MAGIC and pixel_limit is not None:
                # Pillow decodes an icon's largest image while opening it: check first.
                _check_pixels(*_icon_size(data), pixel_limit, name)
            if data[4:8] == b"ftyp" and pixel_limit is not None:
                # HEIF/AVIF: the plugin reports the size after the container's crop,
                # which can hide an image decoded at any size: the declared sizes first.
                _check_pixels(*_heif_size(data), pixel_limit, name)
            image = _open_header(data, name)
            _check_pixels(image.width, image.height, pixel_limit, name)
            key = _low_bit_key(image, data)
            if key is not None:
                image.info["transparency"] = key
            with _pillow_guard_lifted(pixel_limit is None or pixel_limit > _pillow_error_limit()):
                image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as error:  # a plugin's own check while decoding
        raise ImageTooLargeError(
            f"{name}: {error} (raise it with --pixel-limit, or pixel_limit in Python)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as error:
        # (EOFError: pillow-heif's damaged HEVC data; RuntimeError: Pillow's damaged AV1
        # data, libheif's own size limit)
        reason = _reason(error)
        if "ghostscript" in reason.lower():  # EPS: a format this machine cannot render
            raise UnsupportedImageError(f"{name}: EPS needs Ghostscript ({reason})") from None
        if "truncated" in reason.lower():
            raise ImageError(f"{name}: truncated image data ({reason})") from None
        raise ImageError(f"{name}: corrupt image ({reason})") from None
    return _from_pil(image, None, name, owned=True)


def _low_bit_key(image: Image.Image, data: bytes | None = None) -> int | None:
    """A 2- or 4-bit grey PNG's tRNS level as the 8-bit level Pillow gives its pixels;
    None for any other image.

    Pillow scales such pixels to 0..255 (level 1 of 2-bit is 85) but keeps the tRNS key
    at the file's depth, so the transparent level matched no pixel (keys 1 and up) and
    stayed on the picture as grey instead of becoming white background. (1-bit pixels
    and keys are both 0 or 255 to Pillow; 8 and 16 bits are matched as they are.) The
    depth is read from the file's header (`data`), else from a PIL image not yet loaded
    (its tile's raw mode, "L;2")."""
    key = image.info.get("transparency")
    if image.format != "PNG" or image.mode != "L" or not isinstance(key, int):
        return None
    if data is not None:
        if data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR" or len(data) < 26 or data[25] != 0:
            return None
        depth = data[24]
    else:
        tile = getattr(image, "tile", None)  # an ImageFile not yet loaded has it
        raw = str(tile[0].args) if tile else ""
        depth = {"L;2": 2, "L;4": 4}.get(raw, 8)
    if depth not in (2, 4):
        return None
    top = (1 << depth) - 1
    return (key & top) * (255 // top)


def _reason(error: BaseException) -> str:
    """An error's message on one line (libheif's end in a line break)."""
    return " ".join(str(error).split()) or type(error).__name__


# Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS (a module global) while opening
# and in some plugins' load. Our limit replaces it: it is lifted only to read a header (so
# the refusal carries our message) or to decode an image the caller's raised limit allows.
# Threads share that global, so it is lifted while any thread needs it lifted (counted
# under a lock: one thread's restore must not re-arm it under another's decoding), and
# lifted to a huge number, never to None: Pillow's check reads the global twice (`is
# None`, then `2 * MAX_IMAGE_PIXELS`), and a None seen by the second read in another
# thread was a TypeError that Image.open took for "cannot identify image file".
_PILLOW_GUARD_LOCK = threading.Lock()
_LIFTED_LIMIT = sys.maxsize
_lifts = 0  # threads inside _pillow_guard_lifted(True)
_saved_limit: int | None = None  # Pillow's own value while lifted


def _pillow_error_limit() -> float:
    with _PILLOW_GUARD_LOCK:
        pillow = _saved_limit if _lifts else Image.MAX_IMAGE_PIXELS
    return float("inf") if pillow is None else 2 * pillow


@contextlib.contextmanager
def _pillow_guard_lifted(lift: bool = True) -> Iterator[None]:
    global _lifts, _saved_limit
    if not lift:
        yield
        return
    with _PILLOW_GUARD_LOCK:
        if _lifts == 0:
            _saved_limit = Image.MAX_IMAGE_PIXELS
            if _saved_limit is not None:
                Image.MAX_IMAGE_PIXELS = _LIFTED_LIMIT
        _lifts += 1
    try:
        yield
    finally:
        with _PILLOW_GUARD_LOCK:
            _lifts -= 1
            if _lifts == 0 and _saved_limit is not None:
                Image.MAX_IMAGE_PIXELS = _saved_limit


# Pillow's DecompressionBombWarning is ignored while any thread decodes, by one filter
# entry counted under a lock (as Pillow's guard above): put in front of the filters by the
# first thread in, taken out by the last. Not warnings.catch_warnings: it swaps the whole
# filter list, showwarning and its implementation for the process and puts back what it
# saw on entering, so threads decoding at once left the ignore filter in for good (and
# undid a filter set, or the recording of another thread's catch_warnings(record=True), in
# the meantime). The entry is taken out of the list it went into and of the list in force
# (another thread's catch_warnings may have swapped them), so neither keeps it. The
# registries of warnings already shown need no reset (as filterwarnings does): an ignored
# warning is never written to them.
# (Python 3.14's context-aware warnings make catch_warnings thread-safe: used there.)
_WARNINGS_LOCK = threading.Lock()
_QUIET = ("ignore", None, Image.DecompressionBombWarning, re.compile(r"PIL\."), 0)
_quiet_users = 0  # threads inside _bomb_warning_ignored
_quiet_in: list[Any] = []  # the filter list the entry went into, while in
_CONTEXT_WARNINGS = bool(getattr(sys.flags, "context_aware_warnings", False))


@contextlib.contextmanager
def _bomb_warning_ignored() -> Iterator[None]:
    global _quiet_users, _quiet_in
    if _CONTEXT_WARNINGS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
        return
    with _WARNINGS_LOCK:
        if _quiet_users == 0:
            _quiet_in = cast(list[Any], warnings.filters)
            _quiet_in.insert(0, _QUIET)
        _quiet_users += 1
    try:
        yield
    finally:
        with _WARNINGS_LOCK:
            _quiet_users -= 1
            if _quiet_users == 0:
                for filters in (_quiet_in, cast(list[Any], warnings.filters)):
                    with contextlib.suppress(ValueError):  # not (or no longer) in it
                        while True:
                            filters.remove(_QUIET)
                _quiet_in = []


def _open_header(data: bytes, name: str) -> Image.Image:
    """Image.open (header only) without Pillow's bomb error; the caller checks our limit.
    (An ICO is the exception: Pillow decodes it while opening, so decode_bytes measures
    it from its own headers first.) A HEIF/HEIC image Pillow cannot identify is opened
    again once pillow-heif's plugin is registered. A HEIF or AVIF file that its plugin
    refuses raises the plugin's reason: Image.open says only that it cannot identify it,
    which made a truncated phone photo 'not an image'."""
    try:
        return _open(data)
    except UnidentifiedImageError:
        if _is_heif(data):
            if not _heif_registered():
                raise UnsupportedImageError(
                    f"{name}: a HEIF/HEIC image, which needs pillow-heif "
                    "(pip install 'agegender[heif]')"
                ) from None
            with contextlib.suppress(UnidentifiedImageError):
                return _open(data)
            from pillow_heif import open_heif

            open_heif(io.BytesIO(data))  # libheif's reason (truncated, corrupt), if it has one
        elif data[8:12] in _AVIF_BRANDS and features.check("avif"):
            from PIL.AvifImagePlugin import AvifImageFile

            AvifImageFile(io.BytesIO(data))  # libavif's reason
        raise


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        with _pillow_guard_lifted():
            return Image.open(io.BytesIO(data))


# HEIF (HEIC: the photos of iPhones since iOS 11, and of many Android phones) is read by
# pillow-heif (libheif), an optional extra whose import costs about 50 ms: its Pillow
# plugin is registered the first time an image's ISO-BMFF `ftyp` box names a HEIF brand
# that Pillow alone cannot open (AVIF, the same container, is Pillow's own). libheif
# applies the file's rotation and mirroring (`irot`/`imir`) and the plugin then reports
# the EXIF orientation as 1, so the picture is turned once, as on the phone.
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = _HEVC_BRANDS | {b"mif1", b"mif2", b"msf1"}
_AVIF_BRANDS = frozenset({b"avif", b"avis"})  # Pillow's own; pillow-heif does not read them
_HEIF_LOCK = threading.Lock()
_heif_plugin: bool | None = None  # registered; False: pillow-heif is not installed


def _is_heif(data: bytes) -> bool:
    """Whether the bytes start with an ISO-BMFF `ftyp` box naming a HEIF brand (its major
    brand or one of its compatible brands), and not an AVIF's (which names HEIF's
    structural brands too)."""
    if data[4:8] != b"ftyp":
        return False
    end = min(max(int.from_bytes(data[:4], "big"), 16), len(data), 1024)
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    if brands.isdisjoint(_HEVC_BRANDS) and not brands.isdisjoint(_AVIF_BRANDS):
        return False
    return not brands.isdisjoint(_HEIF_BRANDS)


def _heif_size(data: bytes) -> tuple[int, int]:
    """The largest image a HEIF/AVIF file declares: the `ispe` properties in its `meta`
    box give each image's size as decoded (a grid's, its tiles', a thumbnail's), before
    the crop (`clap`) and turn that the plugins' reported size has had."""
    spans = [(0, len(data))]
    for kind, skip in ((b"meta", 4), (b"iprp", 0), (b"ipco", 0), (b"ispe", 4)):
        # (meta and ispe are full boxes: a version and flags before their content)
        spans = [(s + skip, e) for start, end in spans for s, e in _boxes(data, start, end, kind)]
    sizes = [
        (int.from_bytes(data[s : s + 4], "big"), int.from_bytes(data[s + 4 : s + 8], "big"))
        for s, e in spans
        if e - s >= 8
    ]
    return max([(1, 1), *sizes], key=lambda size: size[0] * size[1])


def _boxes(data: bytes, start: int, end: int, kind: bytes) -> Iterator[tuple[int, int]]:
    """The content (start, end) of each ISO-BMFF box of this type in data[start:end]."""
    while start + 8 <= end:
        size, header = int.from_bytes(data[start : start + 4], "big"), 8
        if size == 1:  # a 64-bit size follows the type
            size, header = int.from_bytes(data[start + 8 : start + 16], "big"), 16
        elif size == 0:  # to the end
            size = end - start
        if size < header:
            return
        if data[start + 4 : start + 8] == kind:
            yield start + header, min(start + size, end)
        start += size


def _heif_registered() -> bool:
    global _heif_plugin
    with _HEIF_LOCK:
        if _heif_plugin is None:
            try:
                from pillow_heif import register_heif_opener
            except ImportError:
                _heif_plugin = False
            else:
                register_heif_opener()
                _heif_plugin = True
        return _heif_plugin


_ICO_MAGIC = b"\x00\x00\x01\x00"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _icon_size(data: bytes) -> tuple[int, int]:
    """The largest image of an ICO file, as the headers of its images say (an embedded
    PNG's own IHDR, a bitmap's DIB header; the directory's sizes can say 256 for any)."""
    count = int.from_bytes(data[4:6], "little")
    best = (1, 1)
    for i in range(min(count, 256)):
        entry = data[6 + 16 * i : 22 + 16 * i]
        if len(entry) < 16:
            break
        width, height = entry[0] or 256, entry[1] or 256
        offset = int.from_bytes(entry[12:16], "little")
        head = data[offset : offset + 24]
        if head[:8] == _PNG_MAGIC and len(head) >= 24:
            width = int.from_bytes(head[16:20], "big")
            height = int.from_bytes(head[20:24], "big")
        elif len(head) >= 12:  # BITMAPINFOHEADER: the height counts the AND mask too
            width = abs(int.from_bytes(head[4:8], "little", signed=True))
            height = abs(int.from_bytes(head[8:12], "little", signed=True)) // 2
        if width * height > best[0] * best[1]:
            best = (width, height)
    return best


def _check_pixels(width: int, height: int, pixel_limit: int | None, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if pixel_limit is not None and width * height > pixel_limit:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{pixel_limit} (raise it with --pixel-limit, or pixel_limit in Python)"
        )


def _from_pil(
    image: Image.Image, pixel_limit: int | None, name: str, *, owned: bool = False
) -> NDArray[np.uint8]:
    """RGB pixels of `image`, EXIF orientation applied.

    `owned`: the image is ours (just decoded), so the orientation is applied in place;
    otherwise exif_transpose copies it (the caller's PIL image is never changed), and that
    copy of every pixel cost 0.5-1 ms per 1280x960 photo even with no orientation tag.
    """
    _check_pixels(image.width, image.height, pixel_limit, name)
    caller = None if owned else image
    key = None if owned else _low_bit_key(image)  # (decode_bytes scaled its own)
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the picture
        if owned:
            ImageOps.exif_transpose(image, in_place=True)
        else:
            image = ImageOps.exif_transpose(image) or image
    if key is not None:
        if image is caller:  # the caller's image is never changed
            image = image.copy()
        image.info["transparency"] = key
    try:
        return np.ascontiguousarray(np.asarray(_to_rgb(image), dtype=np.uint8))
    except (OSError, ValueError, EOFError, RuntimeError) as error:
        # truncated or damaged when loaded (see decode_bytes), closed, a mode it lacks
        raise ImageError(f"{name}: cannot read the image ({_reason(error)})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit or 32-bit integer grayscale to 8 bits: 16-bit by its full range; 32-bit
        # by the range its values use beyond 16 bits (they went white, clipped at 65535)
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max(initial=0.0))
        wide = mode.startswith("I;16") or 255 < peak <= 65535
        top = 65535.0 if wide else max(peak, 255.0)
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        key = image.info.get("transparency")
        if isinstance(key, int):  # a 16-bit PNG's tRNS grey level, matched at 16 bits
            alpha = np.where(array == key, 0, 255).astype(np.uint8)
            return _on_white(Image.fromarray(np.dstack([gray, alpha]), "LA"))
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():  # as an array's: one NaN made it scale as 0..255
            raise ValueError("it holds NaN or infinite pixel values")
        gray = _float_to_uint8(array)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "RGB" and "transparency" in image.info:
        key = image.info["transparency"]
        if isinstance(key, tuple) and max(key) > 255:
            # a 16-bit PNG's tRNS colour: Pillow keeps each sample's high byte and the
            # key at 16 bits (it matched no pixel), so the key's high bytes are matched
            alpha = np.where((np.asarray(image) == np.array(key) >> 8).all(axis=2), 0, 255)
            rgba = np.dstack([np.asarray(image), alpha.astype(np.uint8)])
            return _on_white(Image.fromarray(rgba, "RGBA"))
    if mode == "La":  # premultiplied grey: Pillow converts it only to LA
        image = image.convert("LA")
        mode = "LA"
    palette_alpha = mode == "P" and image.palette is not None and image.palette.mode == "RGBA"
    if palette_alpha or (mode in ("P", "1", "L", "RGB") and "transparency" in image.info):
        # a palette index, or (PNG tRNS) one level (1-bit too) or colour, marks transparency:
        # composited on white as an alpha channel is, not left as the keyed colour; so
        # does a palette of RGBA colours (Pillow's quantize or convert("P") of RGBA, which
        # its PNG file keeps as tRNS)
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa"):
        return _on_white(image)
    return image.convert("RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """Composite on white: transparent areas become background, not black faces."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


# A float image is read as 0..1 while its values stay within this, else as 0..255: a 0..1
# image resized with a cubic or Lanczos filter overshoots 1 by a few percent (read as
# 0..255 it was black: no face), and a 0..255 image whose brightest pixel is 2 is black.
_FLOAT_UNIT_TOP = 2.0


def _float_to_uint8(array: NDArray) -> NDArray[np.uint8]:
    top = 1.0 if float(array.max(initial=0.0)) <= _FLOAT_UNIT_TOP else 255.0
    return np.clip(array * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def _from_array(
    array: NDArray, channels: ChannelOrder, pixel_limit: int | None, name: str
) -> NDArray[np.uint8]:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name}: array shape {array.shape} is not H x W, H x W x 3 or 4")
    _check_pixels(array.shape[1], array.shape[0], pixel_limit, name)
    if not array.dtype.isnative:  # big-endian data: the same values in this machine's order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif array.dtype in (np.float32, np.float64):
        if not np.isfinite(array).all():  # one NaN made the whole image scale as 0..255
            raise ImageError(f"{name}: the array holds NaN or infinite pixel values")
        array = _float_to_uint8(array)
    elif array.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported array dtype {array.dtype}")
    if channels not in ("RGB", "BGR"):
        raise ImageError(f"{name}: channels must be RGB or BGR, got {channels!r}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        # RGBA (BGRA in OpenCV's order): composited on white as a file or PIL image with
        # the same pixels is (_to_rgb), so an array gives that image's faces and numbers
        rgba = array[:, :, [2, 1, 0, 3]] if channels == "BGR" else array
        return np.ascontiguousarray(
            np.asarray(_to_rgb(Image.fromarray(np.ascontiguousarray(rgba))))
        )
    if channels == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def expand_each(
    paths: list[str], suffixes: frozenset[str] = IMAGE_SUFFIXES
) -> list[tuple[str, list[str]]]:
    """Each argument with the files it stands for: a file as given (whatever its name or
    suffix), a folder as its files with these suffixes, recursively, sorted.

    Folder walks skip hidden entries (names starting with "."; macOS "._*" resource
    forks among them) and hidden folders; a hidden file or folder named itself is used.
    """
    return [
        (item, walk_images(Path(item), suffixes) if Path(item).is_dir() else [item])
        for item in paths
    ]


def expand_inputs(paths: list[str], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[str]:
    """Files as given; folders expanded to their files with these suffixes (see expand_each)."""
    return [file for _, files in expand_each(paths, suffixes) for file in files]


# A folder agegender writes outputs into inside an input folder holds this (empty) file;
# folder searches skip it, so outputs are never read back as inputs.
OUTPUT_MARKER = ".agegender-output"


def is_output_folder(folder: Path) -> bool:
    return (folder / OUTPUT_MARKER).is_file()


def remove_output_folder(folder: Path) -> None:
    """Remove a folder a run made for its outputs (marked or not), when the run ends
    without writing any: the folder and its marker if nothing else is in it; anything
    else there (or a failure to remove) leaves it as it is, marker included."""
    with contextlib.suppress(OSError):
        if {item.name for item in folder.iterdir()} <= {OUTPUT_MARKER}:
            (folder / OUTPUT_MARKER).unlink(missing_ok=True)
            folder.rmdir()


def walk_images(folder: Path, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[str]:
    """Image files under `folder`, sorted: hidden names and folders agegender wrote its
    output into (``.agegender-output``) left out, links to folders not followed; a link
    with an image's suffix that leads nowhere is kept (its load reports why)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not is_output_folder(Path(root, d))]
        for name in files:
            path = Path(root, name)
            if not name.startswith(".") and path.suffix.lower() in suffixes and _is_input(path):
                found.append(str(path))
    return sorted(found)


def _is_input(path: Path) -> bool:
    """A file, or a link that leads to no file or folder (dangling, a loop): it stands
    for an image that cannot be read, reported as an error rather than left out
    silently."""
    if path.is_file():
        return True
    return path.is_symlink() and not path.exists()
