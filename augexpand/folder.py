"""Reading an ImageFolder safely: scanning it, probing and decoding images, encoding and writing them atomically.

Decoding: JPEGs (YCbCr, grayscale) go through simplejpeg's libjpeg-turbo, at full size or scaled down by 2, 4 or 8
in the DCT domain, with the EXIF orientation applied here; everything else (CMYK JPEGs, PNG, 16-bit, palette,
RGBA, WebP, TIFF) goes through OpenCV as the fallback, which honours EXIF orientation and converts to 8-bit RGB.
Both are libjpeg-turbo with the same accurate integer IDCT and fancy upsampling: their pixels are the same (a
test checks it), and simplejpeg decodes a 12-megapixel JPEG at full size in about 0.6x OpenCV's time. Scanning
only reads image headers (Pillow) and file tails, so that a bad file is found before anything is planned without
paying a full decode per source.

Hostile trees are safe (``walk_class``): only regular files are images (a FIFO or device is never opened), folder
links are followed only where they stay inside their class and do not loop, an image whose header claims more
than ``max_pixels`` pixels is skipped before anything decodes it, and every name of any bytes gives a safe,
unique output name of at most 255 bytes (``safe_stem``, ``class_output_names``).
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import os
import re
import stat
import struct
import sys
import threading
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from augexpand.errors import DestinationError, ImageReadError, SourceError

__all__ = [
    "DECODE_SCALES",
    "DEFAULT_MAX_PIXELS",
    "GLYPH_WARNING",
    "IMAGE_EXTENSIONS",
    "MAX_JPEG_SCANS",
    "NAME_MAX",
    "ScanResult",
    "Skipped",
    "Source",
    "class_output_names",
    "decode_image",
    "decoded_size",
    "display_name",
    "encode_image",
    "is_temp_file",
    "jpeg_scale",
    "largest_scale",
    "limit_opencv_pixels",
    "open_regular",
    "pixel_limit",
    "probe_image",
    "refuse_special",
    "safe_stem",
    "scan_image_folder",
    "unwritable",
    "walk_class",
    "write_atomic",
    "write_figure",
    "write_file",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
OUTPUT_EXTENSIONS = {"jpg": ".jpg", "png": ".png", "webp": ".webp"}
_FORMAT_SIDE = {"jpg": 65500, "webp": 16383}  # the largest side each format holds (PNG: 2**31 - 1)

# Pillow modes that are not plain 8-bit RGB, and the words the summary uses for them.
_CONVERSIONS = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "P": "palette",
    "PA": "palette+alpha",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
    "I": "32-bit integer",
    "F": "32-bit float",
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I;16N": "16-bit",
}

_TEMP_SUFFIX = ".augexpand-tmp"

# What Pillow calls the kinds of image that OpenCV decodes (checked on this OpenCV build): the scan passes over any
# other kind Pillow identifies (ICO, TGA, QOI, SGI, a headerless DIB, ... named .png or .bmp), which used to fail
# only when decoded, after being counted as a source image.
_DECODABLE = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF", "WEBP": "WebP",
              "JPEG2000": "JPEG 2000", "PPM": "PPM", "GIF": "GIF", "AVIF": "AVIF"}

# Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, where it starts to warn): 89.5 megapixels, 268 MB as
# 8-bit RGB. Larger than any camera photo up to 80 MP; a tiny file whose header claims more is skipped at scan
# time, before anything decodes it. `--max-pixels` changes it.
DEFAULT_MAX_PIXELS = 89_478_485
NAME_MAX = 255  # bytes in one file name on ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units there)
_STEM_BYTES = 150  # room for "__samplepairing_123456789-99.jpeg" and the ".<name>.<pid>.augexpand-tmp" of a write
_RESERVED = {"metadata.jsonl", "metadata.csv", "metadata.parquet"}  # split-level manifests of the imagefolder format

# Text that reaches a JSON file or a terminal: a name that is not valid UTF-8 (read with Python's surrogateescape)
# shows each undecodable byte as %XX, so writing it never fails and the text stays valid UTF-8.
_PERCENT = "augexpand-percent"


def _percent_errors(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else f"%u{ord(c):04X}" for c in bad), exc.end


codecs.register_error(_PERCENT, _percent_errors)


def display_name(text: str) -> str:
    """``text`` as valid UTF-8 text: each byte of a non-UTF-8 name (a surrogate escape) becomes %XX."""
    return text.encode("utf-8", _PERCENT).decode("utf-8")


_QUIET = False


def _cv2():
    """OpenCV, with its log silent, once per process: a bad file is reported by augexpand, in one line naming it,
    not by a decoder's warning or error on stderr (imdecode logs an ERROR line, then returns nothing)."""
    import cv2

    global _QUIET
    if not _QUIET:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _QUIET = True
    return cv2


def limit_opencv_pixels(max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Set OpenCV's own decoder limit (``OPENCV_IO_MAX_IMAGE_PIXELS``) to ``max_pixels`` for a process that has not
    imported cv2 yet (OpenCV reads it once, when it loads; a value the user set in the environment wins). It is
    the second guard: images over the limit are already skipped at scan time from their headers."""
    if "cv2" not in sys.modules and "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ:
        # OpenCV reads it as an unsigned 64-bit number and aborts the process on a larger one
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(min(int(max_pixels), (1 << 63) - 1))


def pixel_limit() -> int:
    """The pixel limit in force: what ``limit_opencv_pixels`` (or the user) set for OpenCV, else the default."""
    try:
        return int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS))
    except ValueError:
        return DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Source:
    """One readable source image: where it is, its class, and the stem its outputs are named after."""

    rel: str  # POSIX path relative to the source root, e.g. "cat/holiday/IMG_1.jpg"
    label: int  # index into ScanResult.classes
    stem: str  # safe output stem, unique in the whole dataset, e.g. "holiday_IMG_1"
    mode: str  # Pillow mode before conversion, e.g. "RGB", "L", "I;16"
    width: int  # after EXIF orientation
    height: int
    format: str = ""  # Pillow's format name: "JPEG", "PNG", ... (only JPEGs are decoded at a reduced scale)
    key: int = 0  # content_key() of the file (0: not known): equal for byte-identical files



@dataclass(frozen=True)
class Skipped:
    """A file that was left out, and why."""

    rel: str  # as shown: a byte that is not UTF-8 is written %XX
    reason: str
    bad: bool = True  # a bad file (``--strict`` fails on it); False for a folder link left alone by design


@dataclass
class ScanResult:
    """What a source ImageFolder holds."""

    root: Path
    classes: list[str]
    sources: list[Source]
    skipped: list[Skipped] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    ignored: int = 0  # non-image files (by extension) that were passed over
    class_dirs: list[str] = field(default_factory=list)  # each class's source folder name (classes: output names)
    _duplicates: list[list[int]] | None = field(default=None, repr=False, compare=False)

    def duplicates(self) -> list[list[int]]:
        """Byte-identical source files: groups of two or more source indices (ascending), in the order of their
        first member. Found by the scan's content keys (a file gone since, or not readable now, is in none)."""
        if self._duplicates is None:
            self._duplicates = _duplicate_groups(self)
        return self._duplicates

    @property
    def conversions(self) -> dict[str, int]:
        """How many sources of each non-RGB kind are converted to 8-bit RGB."""
        return self.converted()

    def converted(self, excluding: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """How many sources of each non-RGB kind are converted to 8-bit RGB, leaving out the sources (by ``rel``)
        that turned out unreadable when decoded (a 32-bit float TIFF: its header reads, OpenCV cannot decode it)."""
        counts = Counter(_CONVERSIONS[s.mode] for s in self.sources if s.mode in _CONVERSIONS and
                         s.rel not in excluding)
        return dict(sorted(counts.items()))

    def counts(self, excluding: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """Readable source images per class, in class order, leaving out the sources (by ``rel``) that turned out
        unreadable when decoded."""
        per = Counter(s.label for s in self.sources if s.rel not in excluding)
        return {name: per[i] for i, name in enumerate(self.classes)}


def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` UTF-8 bytes (never half a character)."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def safe_stem(rel_in_class: str) -> str:
    """A file-name stem from a path inside a class folder: no separators, no leading dot, nothing exotic.

    Works for any bytes a file system allows (a non-UTF-8 byte becomes its %XX hex pair before cleaning). A stem
    longer than 150 UTF-8 bytes is cut and ends in ``~`` and 8 hex digits of the whole path, so that outputs
    named after it stay well inside the 255-byte file name limit, and distinct long names stay distinct.
    """
    rel_in_class = display_name(rel_in_class)
    without_ext = rel_in_class.rsplit(".", 1)[0] if "." in Path(rel_in_class).name else rel_in_class
    text = unicodedata.normalize("NFC", without_ext.replace("/", "_").replace("\\", "_"))
    text = re.sub(r"[^\w.\-]+", "_", text, flags=re.UNICODE).strip("._-")
    if len(text.encode("utf-8")) > _STEM_BYTES:
        digest = hashlib.sha1(rel_in_class.encode("utf-8")).hexdigest()[:8]
        text = f"{_cut(text, _STEM_BYTES - 9).rstrip('._-')}~{digest}"
    return text or "image"


def class_output_names(folders: list[str]) -> list[str]:
    """The output folder (and label) of each class folder: valid UTF-8 (%XX for a byte that is not), at most 255
    bytes, not a name the output reserves for a manifest (``metadata.jsonl`` becomes ``metadata.jsonl_``), and
    unique. A name that needs none of this is kept as it is."""
    out: list[str] = []
    taken: set[str] = set()
    for folder in folders:
        base = _cut(display_name(folder), NAME_MAX)
        name, n = base, 1
        while name.lower() in _RESERVED or name in taken or name in ("", ".", ".."):
            n += 1
            suffix = "_" if n == 2 else f"_{n}"
            name = _cut(base, NAME_MAX - len(suffix)) + suffix
        taken.add(name)
        out.append(name)
    return out


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of our in-flight temporary files."""
    return name.endswith(_TEMP_SUFFIX)


def _hidden(name: str) -> bool:
    return name.startswith((".", "__MACOSX"))


def _kind(mode: int) -> str:
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode) else
            "not a plain file")


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def walk_class(folder: Path, root: Path | None = None,
               extensions: frozenset[str] | None = IMAGE_EXTENSIONS) -> tuple[list[Path], list[Skipped]]:
    """Every regular, non-hidden file below ``folder`` (with one of ``extensions``, or any with None), sorted;
    and what was passed over, with why (relative to ``root``, or to ``folder``'s parent).

    Safe on hostile trees: a FIFO, socket or device is never opened (only ``os.stat``); a broken link is named;
    a folder link is followed only when its target lies inside ``folder``'s real path and is not a folder
    already walked (no loops, no leaving the class: ``cat/up -> ..`` would label the other classes as cat);
    an unreadable sub-folder is named instead of silently dropping its images. File links are followed (a
    folder of links into a pool of images is a common way to build a dataset).
    """
    folder = Path(folder)
    root = Path(root) if root is not None else folder.parent
    base = os.path.realpath(folder)
    found: list[Path] = []
    passed: list[Skipped] = []

    def rel(path: str | Path) -> str:
        try:
            return display_name(Path(path).relative_to(root).as_posix())
        except ValueError:
            return display_name(str(path))

    def unreadable(exc: OSError) -> None:
        passed.append(Skipped(rel(exc.filename or folder), f"cannot read folder ({exc.strerror or exc})"))

    visited: set[tuple[int, int]] = set()
    try:
        st = os.stat(folder)
        visited.add((st.st_dev, st.st_ino))
    except OSError as exc:
        unreadable(exc)
        return found, passed
    for dirpath, dirnames, filenames in _walk(folder, unreadable):
        keep = []
        # Real folders before links, so that a link to a folder that is also here is the one passed over.
        for d in sorted((d for d in dirnames if not _hidden(d)), key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d)):
            full = os.path.join(dirpath, d)
            link = os.path.islink(full)
            if link and not _within(os.path.realpath(full), base):
                passed.append(Skipped(rel(full), f"folder link leads out of its class folder "
                                                 f"(to {display_name(os.path.realpath(full))}): not followed",
                                      bad=False))
                continue
            try:
                st = os.stat(full)
            except OSError as exc:
                passed.append(Skipped(rel(full), f"cannot read folder ({exc.strerror or exc})"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                passed.append(Skipped(rel(full), "folder link to a folder already scanned (a loop): not followed"
                                      if link else "folder already scanned: not followed", bad=False))
                continue
            visited.add(key)
            keep.append(d)
        dirnames[:] = sorted(keep)
        for f in filenames:
            if _hidden(f) or (extensions is not None and Path(f).suffix.lower() not in extensions):
                continue
            path = Path(dirpath) / f
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    passed.append(Skipped(rel(path), "broken link" if os.path.islink(path) else
                                          f"cannot read ({exc.strerror or exc})"))
                continue
            if stat.S_ISREG(mode):
                found.append(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                passed.append(Skipped(rel(path), f"{_kind(mode)}, not a regular file: never opened"))
    return sorted(found), passed


def _walk(top: Path, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, onerror=onerror, followlinks=True)``, top-down, with a stack instead of recursion: a tree
    nested deeper than Python's recursion limit (1000) is walked too. The caller prunes ``dirnames`` in place."""
    stack = [os.fspath(top)]
    while stack:
        dirpath = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError as exc:
            onerror(exc)
            continue
        dirnames, filenames = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows a link, as followlinks=True does
            except OSError:
                is_dir = False
            (dirnames if is_dir else filenames).append(entry.name)
        yield dirpath, dirnames, filenames
        stack.extend(os.path.join(dirpath, d) for d in reversed(dirnames))


def _walk_files(folder: Path) -> list[Path]:
    """Every regular non-hidden file below folder, sorted (``walk_class`` without what it passed over)."""
    return walk_class(folder, extensions=None)[0]


def _check_tail(f, fmt: str, size: int) -> None:
    """Cheap truncation check on an open file: a JPEG must end with its EOI marker, a PNG with its IEND chunk, an
    uncompressed BMP must hold the rows its header says it has."""
    if fmt == "BMP":
        f.seek(0)
        head = f.read(54)
        if len(head) == 54 and head[14:18] in (b"\x28\0\0\0", b"\x6c\0\0\0", b"\x7c\0\0\0"):  # BITMAPINFOHEADER+
            offset, width, height, _, bits, compression = struct.unpack("<10xI4xiiHHI", head[:34])
            need = offset + (abs(width) * bits + 31) // 32 * 4 * abs(height)
            if compression in (0, 3) and need > size:  # BI_RGB, BI_BITFIELDS: no compression to account for
                raise ImageReadError(f"truncated BMP ({size:,} of the {need:,} bytes its header describes)")
        return
    if fmt not in ("JPEG", "PNG"):
        return
    f.seek(max(0, size - 4096))
    tail = f.read()
    if fmt == "JPEG" and b"\xff\xd9" not in tail and not _jpeg_ends(f, size):
        raise ImageReadError("truncated JPEG (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in tail[-64:] and not _png_ends(f, size):
        raise ImageReadError("truncated PNG (no IEND chunk)")


# Data after an image's end (a motion photo's video after its JPEG, zero padding, an app's trailer) leaves the image
# whole: the decoders stop at its end. These look for that end when it is not in the file's last bytes.

def _jpeg_ends(f, size: int) -> bool:
    """Whether a JPEG's end-of-image marker follows its first scan (never in entropy-coded data, where an FF is
    followed by 00 or a restart marker; an EXIF thumbnail's own, in the header, does not count), read in 1 MB
    pieces."""
    f.seek(0)
    head = f.read(min(size, _JPEG_HEADER))
    start = 2
    for _, at, length in _jpeg_headers(head):
        start = at + 2 + length
    scan = head.find(b"\xff\xda", start)
    if scan < 0:
        return False
    f.seek(scan)
    carry = b""
    while chunk := f.read(1 << 20):
        if b"\xff\xd9" in carry + chunk:
            return True
        carry = chunk[-1:]
    return False


def _png_ends(f, size: int) -> bool:
    """Whether a PNG holds its IEND chunk (always these 12 bytes: empty, and so one CRC), read in 1 MB pieces at
    memory speed (walking a million crafted chunks one by one took 6 s)."""
    f.seek(8)
    carry = b""
    while chunk := f.read(1 << 20):
        if _IEND in carry + chunk:
            return True
        carry = chunk[-(len(_IEND) - 1):]
    return False


_IEND = b"\0\0\0\0IEND\xaeB`\x82"


class _NotRegular(OSError):
    """A path that is not a regular file (its ``strerror`` says what it is)."""


def open_regular(path: Path, follow: bool = True):
    """``path`` opened for reading in binary, only if it is a regular file: a FIFO in its place cannot block the
    open (O_NONBLOCK: it would wait for a writer for ever), nor a device (a link to /dev/zero) be read without end.
    ``follow=False``: not through a link either. Raises OSError (its ``strerror`` says why) otherwise."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _NotRegular(0, f"{_kind(mode)}, not a regular file", str(path))
    os.set_blocking(fd, True)
    return open(fd, "rb")


def _open_regular(path: Path):
    """An image file opened by ``open_regular``, and its size; what stands in the way is an ImageReadError."""
    try:
        f = open_regular(path)
    except _NotRegular as exc:
        raise ImageReadError(f"{exc.strerror}: never read") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read: {exc.strerror or exc}") from None
    return f, os.fstat(f.fileno()).st_size


def _check_file_size(size: int, max_pixels: int | None) -> None:
    """Refuse a file larger than any image within the pixel limit can be (8 bytes a pixel: an uncompressed 16-bit
    RGBA TIFF; at least 1 GiB): it is read whole to be decoded, and data after an image's end (a sparse file of
    gigabytes behind a small JPEG) would take that much memory in every worker."""
    limit = None if max_pixels is None else max(1 << 30, 8 * max_pixels)
    if limit is not None and size > limit:
        raise ImageReadError(f"a file of {size / (1 << 30):.1f} GiB: more than an image within the pixel limit takes "
                             f"(at most {limit / (1 << 30):.1f} GiB; data after the image? --max-pixels raises it)")


def _over_limit(width: int, height: int, max_pixels: int | None) -> str | None:
    if max_pixels is None or width * height <= max_pixels:
        return None
    return (f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit of {max_pixels / 1e6:.1f} "
            f"(a decompression bomb? --max-pixels raises the limit)")


KEY_END = 1 << 13  # content_key reads a file's first and last KEY_END bytes


def content_key(f, size: int) -> int:
    """A cheap key of an open file's content, never 0: its size and the CRC-32 of its first and last KEY_END bytes
    (what the scan reads anyway: 20 us a file, where hashing a whole 50 KB photo would cost 0.2 ms). Byte-identical
    files have equal keys; files of equal keys are compared whole before they are called copies
    (``ScanResult.duplicates``)."""
    fd = f.fileno()
    crc = zlib.crc32(os.pread(fd, KEY_END, 0))
    if size > KEY_END:
        crc = zlib.crc32(os.pread(fd, KEY_END, max(KEY_END, size - KEY_END)), crc)
    return (size & 0x7FFFFFFF) << 32 | crc or 1


_JPEG_JUNK = 1 << 16  # bytes of padding or junk between a JPEG's markers that Pillow may be left to step over
_JPEG_HEADER = 1 << 24  # a JPEG whose first scan starts later than this is refused
_NO_LENGTH = frozenset([0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)])  # markers without a length (as Pillow reads)
_FILL = re.compile(b"\xff+")


def _check_jpeg_header(f, size: int) -> None:
    """Walk a JPEG's markers up to its first scan, as Pillow's parser does, and refuse one whose markers are
    separated by more than 64 KB of padding or junk, or whose first scan starts past 16 MB: Pillow steps over junk
    one byte at a time in Python (a 20 MB file of fill bytes took 16 s to probe; a partial download padded with
    zeros as long). Reads the header in 64 KB pieces; a real header is read in one."""
    f.seek(0)
    buf = f.read(1 << 16)
    i, junk = 2, 0
    while junk <= _JPEG_JUNK:
        if i + 4 > len(buf) and len(buf) < min(size, _JPEG_HEADER):  # read on, as far as the walk needs
            buf += f.read(max(1 << 16, i + 4 - len(buf)))
            continue
        if i + 2 > len(buf):  # the end of the file, or of what is walked
            if len(buf) >= _JPEG_HEADER:
                raise ImageReadError(f"a JPEG whose first scan starts past {_JPEG_HEADER >> 20} MB (its header is "
                                     f"damaged)")
            return  # cut short: Pillow and the tail check say so
        if buf[i] != 0xFF:  # junk: Pillow skips it byte by byte
            j = buf.find(b"\xff", i)
            j = len(buf) if j < 0 else j
            junk, i = junk + j - i, j
            continue
        j = _FILL.match(buf, i).end()  # fill bytes before a marker
        if j - i > 1:
            junk, i = junk + j - i - 1, j - 1
            continue
        marker = buf[i + 1]
        if marker == 0xDA:  # the first scan: the header is read
            return
        if marker < 0xC0 and marker != 0x00:  # not a marker: Pillow stops there ("no marker found")
            return
        i += 2 if marker == 0x00 or marker in _NO_LENGTH else 2 + int.from_bytes(buf[i + 2:i + 4], "big")
    raise ImageReadError(f"a JPEG whose header holds more than {_JPEG_JUNK // 1024} KB of padding or junk between "
                         f"its markers (damaged, or a partial download?)")


_PNG_CHUNKS = 10_000  # chunks before a PNG's pixels (IDAT) that Pillow may be left to parse; real files hold < 100


def _png_chunks(f) -> Iterator[tuple[bytes, int, int]]:
    """A PNG's chunks walked by their lengths, nothing decoded: (type, length of its data, offset of the chunk), at
    most _PNG_WALK of them, up to its IEND or the end of the file."""
    at = 8
    for _ in range(_PNG_WALK):
        f.seek(at)
        head = f.read(8)
        if len(head) < 8 or head[4:] == b"IEND":
            return
        length = int.from_bytes(head[:4], "big")
        yield head[4:], length, at
        at += 12 + length


def _check_png_chunks(f, size: int) -> tuple[int, int] | None:
    """Refuse a PNG of more than _PNG_CHUNKS chunks before its first IDAT, counted by their lengths alone: Pillow
    parses and checks each one in Python (a million empty chunks, 12 MB, took 6 s to probe); and one with a chunk
    that runs past the end of the file (of its first _PNG_WALK): OpenCV allocates what a chunk's length claims
    before it reads it (a 7 KB file whose IDAT claimed 2.6 GB: 2.6 GB and 2 s to fail). Returns where its first
    eXIf chunk's data is (offset, length), for ``_png_orientation``; None without one."""
    pixels, exif = False, None
    for n, (kind, length, at) in enumerate(_png_chunks(f)):
        if at + 12 + length > size:
            raise ImageReadError(f"truncated PNG (its {kind.decode('latin-1')!r} chunk of {length:,} bytes runs "
                                 f"past the end of the file, {size:,} bytes)")
        pixels = pixels or kind == b"IDAT"
        if not pixels and n >= _PNG_CHUNKS:
            break
        if kind == b"eXIf" and exif is None:
            exif = (at + 8, length)
    else:
        return exif
    raise ImageReadError(f"a PNG of more than {_PNG_CHUNKS:,} chunks before its pixels (crafted, or damaged)")


def probe_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[str, int, int, str]:
    """Read only the header (and tail) of an image: its Pillow mode, its size after EXIF orientation, its format.

    Raises ImageReadError with the reason when the file is empty, not a regular file, not an image, truncated,
    or when its header claims more than ``max_pixels`` pixels (None: no limit).
    """
    return _probe(path, max_pixels)[:4]


def _probe(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
           key: bool = False) -> tuple[str, int, int, str, int]:
    """``probe_image``, and the file's ``content_key`` with ``key`` (else 0)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # only the header is read here; the pixel limit is checked below, by us
    f, size = _open_regular(path)
    with f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings on odd headers (corrupt EXIF, ...): the scan decides
        if size == 0:
            raise ImageReadError("empty file (0 bytes)")
        _check_file_size(size, max_pixels)
        magic, png_exif = f.read(8), None
        if magic[:3] == b"\xff\xd8\xff":
            _check_jpeg_header(f, size)
        elif magic == b"\x89PNG\r\n\x1a\n":
            png_exif = _check_png_chunks(f, size)
        f.seek(0)
        try:
            with Image.open(f) as im:
                fmt, mode, (width, height) = im.format or "", im.mode, im.size
                jpeg = fmt in ("JPEG", "MPO")
                orientation, jpeg_exif = 1, jpeg and "exif" in im.info
                if fmt == "PNG":  # Pillow's getexif decodes every pixel of a PNG to find an eXIf after them
                    orientation = _png_orientation(f, png_exif)
                elif not jpeg:  # a JPEG's is read below, as its decoders read it
                    try:
                        orientation = im.getexif().get(0x0112, 1)
                    except Exception:  # noqa: BLE001 -- a broken EXIF block does not make the pixels unreadable
                        orientation = 1
                if fmt == "TIFF":  # Pillow 11+ reports a TIFF's size already turned by its orientation: the stored one
                    stored = im.tag_v2.get(256), im.tag_v2.get(257)  # ImageWidth, ImageLength
                    if all(isinstance(v, int) for v in stored):
                        width, height = stored
        except UnidentifiedImageError:
            bits = _jpeg_precision(f) if magic[:3] == b"\xff\xd8\xff" else None
            if bits is not None and bits != 8:
                raise ImageReadError(f"a {bits}-bit JPEG: only 8-bit JPEGs are read") from None
            raise ImageReadError("not an image Pillow or OpenCV can identify") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if "truncated" in str(exc).lower():
                raise ImageReadError("truncated file (cut short inside its header)") from None
            raise ImageReadError(f"unreadable image header ({exc})") from None
        if fmt not in _DECODABLE:
            kinds = ", ".join(dict.fromkeys(_DECODABLE.values()))
            raise ImageReadError(f"an image of kind {fmt or 'unknown'}: not one OpenCV decodes ({kinds})")
        if width <= 0 or height <= 0:
            raise ImageReadError(f"image has no pixels ({width}x{height})")
        too_big = _over_limit(width, height, max_pixels)
        if too_big:
            raise ImageReadError(too_big)
        _check_tail(f, fmt, size)
        if jpeg_exif:  # from the EXIF block alone, as the decoders read it (simplejpeg's path and OpenCV agree;
            f.seek(0)   # Pillow drops an entry of a bogus count): the size decoded
            orientation = _exif_orientation(f.read(65536 + 4))
        digest = content_key(f, size) if key else 0
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return mode, width, height, fmt, digest


DECODE_SCALES = (8, 4, 2)  # the JPEG scales libjpeg-turbo decodes fast, largest first (1 otherwise)


def decoded_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """(height, width) of an image decoded at 1/``scale``: libjpeg rounds each side up."""
    return -(-height // scale), -(-width // scale)


def _jpeg_headers(data: bytes) -> Iterator[tuple[int, int, int]]:
    """A JPEG's header segments before its first scan: (marker, offset of its FF, its length field), fill bytes
    passed over; ends at a start of scan, the end of the image, the end of ``data`` or a byte that is no marker."""
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more headers
            return
        length = int.from_bytes(data[i + 2:i + 4], "big")
        yield marker, i, length
        i += 2 + length


def _exif_tiff(data: bytes | np.ndarray) -> tuple[bytes, str] | None:
    """A JPEG's EXIF block (the TIFF structure of its APP1 segment) and its byte order, or None; reads only the
    headers before the scan."""
    head = bytes(data[:65536 + 4])  # an APP1 segment is at most 64 KiB, and it comes first or after APP0
    for marker, i, length in _jpeg_headers(head):
        if marker == 0xE1 and head[i + 4:i + 10] == b"Exif\0\0":
            tiff = head[i + 10:i + 2 + length]
            order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
            return None if order is None or len(tiff) < 8 else (tiff, order)
    return None


def _ifd(tiff: bytes, order: str, offset: int) -> tuple[dict[int, int], int]:
    """The short and long values of an IFD's entries (tag -> value), and the offset of the next IFD (0: none)."""
    count = int.from_bytes(tiff[offset:offset + 2], order) if 0 < offset <= len(tiff) - 2 else 0
    values = {}
    for k in range(count):
        entry = tiff[offset + 2 + 12 * k:offset + 14 + 12 * k]
        if len(entry) < 12:
            return values, 0
        kind = int.from_bytes(entry[2:4], order)
        if kind == 3:  # SHORT
            values[int.from_bytes(entry[:2], order)] = int.from_bytes(entry[8:10], order)
        elif kind == 4:  # LONG
            values[int.from_bytes(entry[:2], order)] = int.from_bytes(entry[8:12], order)
    end = offset + 2 + 12 * count
    return values, int.from_bytes(tiff[end:end + 4], order) if count and end + 4 <= len(tiff) else 0


def _exif_orientation(data: bytes | np.ndarray) -> int:
    """The EXIF orientation (1-8) of a JPEG from its APP1 segment, or 1; reads only the headers before the scan."""
    exif = _exif_tiff(data)
    if exif is None:
        return 1
    tiff, order = exif
    return _orientation_tag(_ifd(tiff, order, int.from_bytes(tiff[4:8], order))[0])


def _png_orientation(f, exif: tuple[int, int] | None) -> int:
    """The EXIF orientation of a PNG's eXIf chunk, before or after its pixels (OpenCV honours both), or 1; ``exif``:
    where its data is, as ``_check_png_chunks`` found it walking the chunks (Pillow's getexif decoded the whole
    image for it, 0.3 s for a 12-megapixel PNG, and parsed each of a million crafted chunks, 13 s)."""
    if exif is None:
        return 1
    at = f.tell()
    try:
        f.seek(exif[0])
        tiff = f.read(min(exif[1], 1 << 16))
    finally:
        f.seek(at)
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    return _orientation_tag(_ifd(tiff, order, int.from_bytes(tiff[4:8], order))[0])


_PNG_WALK = 100_000  # a PNG's chunks walked for its eXIf (a 1 GB PNG of libpng's 8 KB IDAT chunks holds 125,000)


def _orientation_tag(ifd0: dict[int, int]) -> int:
    value = ifd0.get(0x0112, 1)
    return value if 1 <= value <= 8 else 1


def exif_thumbnail(head: bytes, width: int, height: int, min_side: int) -> np.ndarray | None:
    """The JPEG thumbnail that camera files carry in EXIF (IFD1, 160x120 in the DCF standard), decoded, upright,
    RGB, from the first bytes of the file (``head``: 64 KiB are enough); None when there is none, when it is not
    a JPEG, when its short side is under ``min_side``, or when its shape is not the photo's (``width`` x
    ``height``, upright as the scan records them; cameras pad a 3:2 photo's thumbnail to 4:3 with black bars).
    Decoding it takes well under a millisecond, against about 20 ms for a 12-megapixel photo even at 1/8 scale."""
    exif = _exif_tiff(head)
    if exif is None:
        return None
    tiff, order = exif
    ifd0, ifd1_offset = _ifd(tiff, order, int.from_bytes(tiff[4:8], order))
    ifd1, _ = _ifd(tiff, order, ifd1_offset)
    start, length = ifd1.get(0x0201, 0), ifd1.get(0x0202, 0)
    if not (start and length) or start + length > len(tiff) or ifd1.get(0x0103, 6) != 6:
        return None
    data = tiff[start:start + length]
    if data[:2] != b"\xff\xd8":
        return None
    try:
        image = decode_image(data)
    except ImageReadError:
        return None
    if min(image.shape[:2]) < min_side:
        return None
    image = _orient(image, _orientation_tag(ifd0))  # the photo's orientation, which its thumbnail shares
    th, tw = image.shape[:2]
    if abs(tw * height - th * width) > 0.03 * tw * height:  # another aspect ratio: padded, or another picture
        return None
    return image


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to decoded pixels, as Pillow's ``ImageOps.exif_transpose`` does."""
    import cv2

    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def _decode_jpeg(data: np.ndarray, scale: int) -> np.ndarray | None:
    """A YCbCr or grayscale JPEG through simplejpeg at 1/``scale``, upright; None to leave it to OpenCV."""
    try:
        import simplejpeg
    except ImportError:  # OpenCV decodes the same pixels, more slowly
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray", "RGB"):  # CMYK, YCCK: OpenCV's conversion, as always
            return None
        if _over_decoder_limit(height, width):
            return None  # OpenCV refuses it, in its words
        # libjpeg-turbo picks the smallest of its scales (n/8) that keeps these sides: exactly 1/scale.
        image = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // scale), min_width=-(-width // scale))
    except ValueError:  # corrupt, truncated or exotic: OpenCV says what it makes of it
        return None
    return _orient(image, _exif_orientation(data))


def largest_scale(width: int, height: int, need: Callable[[int, int], bool]) -> int:
    """The largest JPEG decode scale (``DECODE_SCALES``, else 1) whose decoded (height, width) satisfies ``need``."""
    return next((r for r in DECODE_SCALES if need(*decoded_size(width, height, r))), 1)


def jpeg_scale(height: int, width: int, min_side: int) -> int:
    """The largest JPEG decode scale (8, 4, 2, else 1) whose decoded short side keeps at least ``min_side``."""
    return largest_scale(width, height, lambda h, w: min(h, w) >= min_side)


def _over_decoder_limit(height: int, width: int) -> bool:
    """Whether a header's size is over OpenCV's own pixel limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, see
    :func:`limit_opencv_pixels`), which the full-size decode enforces."""
    return height * width > int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 30)))


def _header_scale(data: np.ndarray, min_side: int) -> int:
    """:func:`jpeg_scale` of a JPEG's bytes, from its header. 1 when the header does not say, or claims more
    pixels than the decoders' limit: the full-size decode refuses it then (a reduced decode is within the limit
    and would decode a decompression bomb's garbage)."""
    try:
        import simplejpeg

        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except (ImportError, ValueError):
        return 1
    return 1 if _over_decoder_limit(height, width) else jpeg_scale(height, width, min_side)


_DEVNULL: int | None = None
QUIET_NATIVE_STDERR = False  # set by the command line (``cli.main``): its process, and the workers it forks, are ours
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """File descriptor 2 points at /dev/null while the block runs: OpenCV's libpng and libjpeg write a damaged
    file's complaint there themselves ("libpng error: IDAT: incorrect data check", "Inconsistent progression
    sequence"), whatever OpenCV's log level. The file is named once, by augexpand, with its reason. (About 7 us.)

    Only where the process is augexpand's own (``QUIET_NATIVE_STDERR``: the command line and its workers), and one
    thread at a time: fd 2 belongs to the whole process, so in someone else's program (the Python API in a service
    with threads of its own) their stderr would vanish meanwhile. There the complaint is let through."""
    if not QUIET_NATIVE_STDERR:
        yield
        return
    global _DEVNULL
    with _STDERR_LOCK:
        if _DEVNULL is None:
            _DEVNULL = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(_DEVNULL, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# A progressive JPEG is decoded one scan at a time, each a pass over the whole image: a small file can hold
# thousands of scans (a "scan bomb": 125 KB, 16 megapixels, 1,000 scans took 36 s to decode here; 10,000 would take
# six minutes, for each row that reads it). libjpeg's progressive script makes 10 scans (6 for grey), optimised
# encoders a few dozen.
MAX_JPEG_SCANS = 100


def _jpeg_frame(raw: bytes) -> tuple[int, int] | None:
    """(marker, offset of its FF) of a JPEG's start-of-frame header (SOF0-15 but DHT, JPG and DAC), from the markers
    before its first scan; None without one."""
    for marker, at, _ in _jpeg_headers(raw):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker, at
    return None


def _progressive(raw: bytes) -> bool:
    """Whether a JPEG's frame is progressive (SOF2, 6, 10, 14), from the markers before its first scan. (A baseline
    JPEG decodes one scan per component: further scans are refused or passed over at once.)"""
    frame = _jpeg_frame(raw)
    return frame is not None and frame[0] in (0xC2, 0xC6, 0xCA, 0xCE)


def _jpeg_frame_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) that a JPEG's start-of-frame header claims, from the markers before its first scan."""
    frame = _jpeg_frame(raw)
    if frame is None or frame[1] + 9 > len(raw):
        return None
    at = frame[1]
    return int.from_bytes(raw[at + 5:at + 7], "big"), int.from_bytes(raw[at + 7:at + 9], "big")


def _bomb_reason() -> str:
    limit = pixel_limit()
    limit_text = f"{limit / 1e6:.1f} megapixels" if limit >= 100_000 else f"{limit:,} pixels"
    return f"its header claims more pixels than the limit of {limit_text} (a decompression bomb? --max-pixels " \
           f"raises the limit)"


def _jpeg_precision(f) -> int | None:
    """The sample precision (bits) a JPEG's start-of-frame header gives, from the markers before its first scan."""
    f.seek(0)
    head = f.read(_JPEG_HEADER)
    frame = _jpeg_frame(head)
    return head[frame[1] + 4] if frame is not None and frame[1] + 4 < len(head) else None


def _check_scans(raw: bytes) -> None:
    """Refuse a progressive JPEG of more than MAX_JPEG_SCANS scans, counted by their start-of-scan markers (FF DA;
    entropy-coded data never holds one: an FF there is followed by 00 or a restart marker), at memory speed."""
    if not _progressive(raw):
        return
    scans = raw.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageReadError(f"a JPEG of {scans:,} scans: at most {MAX_JPEG_SCANS} are decoded (a progressive JPEG "
                             f"has about 10; each scan is a pass over the whole image: a decoding bomb?)")


def decode_image(source: Path | bytes, reduced: int = 1, min_side: int = 0) -> np.ndarray:
    """Decode an image file (or its bytes) to an (H, W, 3) uint8 RGB array, honouring EXIF orientation.

    ``reduced`` of 2, 4 or 8 decodes a JPEG at that fraction of its size in the DCT domain (each side rounded up;
    2-6x faster than a full decode); other formats are decoded at full size and shrunk by OpenCV.
    ``min_side``: for a consumer that shrinks the image to that short side anyway (training's fit): a JPEG is
    decoded at the largest scale that keeps it (:func:`jpeg_scale`, from its header), other formats at full size.
    """
    cv2 = _cv2()

    if isinstance(source, bytes):
        raw = source
    else:
        f, size = _open_regular(source)
        try:
            with f:
                _check_file_size(size, pixel_limit())  # it may have grown since the scan
                raw = f.read()
        except OSError as exc:
            raise ImageReadError(f"cannot read: {exc.strerror or exc}") from None
    data = np.frombuffer(raw, np.uint8)
    if data.size == 0:
        raise ImageReadError("empty file (0 bytes)")
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        _check_png_chunks(io.BytesIO(raw), len(raw))
    jpeg = data.size > 2 and data[0] == 0xFF and data[1] == 0xD8
    if jpeg:
        _check_scans(raw)
        size = _jpeg_frame_size(raw)
        if reduced != 1 and size is not None and _over_decoder_limit(*size):
            # OpenCV checks its limit against the reduced size: a file that became a bomb after the scan (whose
            # header check it passed) would decode its garbage at 1/8 for seconds and gigabytes
            raise ImageReadError(_bomb_reason())
    if jpeg and min_side > 0 and reduced == 1:
        reduced = _header_scale(data, min_side)
    flag = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduced]
    if jpeg:
        image = _decode_jpeg(data, reduced)
        if image is not None:
            return image
    try:
        if jpeg or raw[:8] == b"\x89PNG\r\n\x1a\n":
            with _native_stderr_quiet():
                image = cv2.imdecode(data, flag)
        else:
            image = cv2.imdecode(data, flag)
    except cv2.error as exc:  # e.g. a header over OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS)
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise ImageReadError(_bomb_reason()) from None
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise ImageReadError(f"OpenCV cannot decode it ({reason})") from None
    if image is None:
        raise ImageReadError("OpenCV cannot decode it (corrupt, truncated, or a kind of image it cannot read)")
    if reduced != 1:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def encode_image(image: np.ndarray, fmt: str, quality: int = 95, png_compression: int = 1) -> bytes:
    """Encode an RGB uint8 image as jpg, png or webp bytes.

    JPEG: 4:2:0, no Huffman optimisation (it halves encode speed). PNG: zlib level ``png_compression`` with
    Huffman-only strategy and the SUB filter, 2-3x faster than OpenCV's default at about the same size.
    """
    cv2 = _cv2()

    h, w = image.shape[:2]
    if max(h, w) > _FORMAT_SIDE.get(fmt, max(h, w)):  # said here: OpenCV would log an error line of its own
        raise ImageReadError(f"a {h}x{w} image cannot be written as {fmt} (at most {_FORMAT_SIDE[fmt]} pixels a "
                             f"side; png has no such limit)")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if fmt == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 0]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
        if png_compression > 0:
            params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                       cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected jpg, png or webp")
    ok, buf = cv2.imencode(OUTPUT_EXTENSIONS[fmt], bgr, params)
    if not ok:
        raise ImageReadError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


def write_atomic(path: Path, data: bytes | str | Iterable[str], sync: bool = False) -> None:
    """Write a file so that it either exists whole or not at all: a temporary sibling, then a rename. ``data``
    may be an iterable of text pieces (a manifest's lines), written as they come, never all in memory. ``sync``
    flushes it to the disk before the rename (fsync), for the few files that say what a run is (cards,
    manifests, a run's config): after a power cut a renamed file could otherwise be empty, and an empty
    dataset.json makes a destination look like no run of ours. Images and per-epoch files go without (a flush
    costs milliseconds)."""
    # A new file (O_EXCL), never through a link (O_NOFOLLOW), removed again if writing fails (a full disk).
    # Text is UTF-8; a name that is not (a surrogate escape of a non-UTF-8 byte) is written as %XX, never a crash.
    tmp = path.with_name(f".{os.getpid()}-{os.urandom(4).hex()}{_TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with open(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            elif isinstance(data, str) or not hasattr(data, "__iter__"):
                f.write(data.encode("utf-8", _PERCENT))
            else:
                f.writelines(piece.encode("utf-8", _PERCENT) for piece in data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk fails a write(), which names no file
            exc.filename = str(path)
        raise


def write_file(path: Path, data: bytes | str) -> None:
    """``write_atomic`` into ``path``, its folders made first, for a file the user names (a preview sheet, a
    chart, ...): what the system refuses (a folder of that name, a file where a folder must be, no permission, a
    full disk) is a DestinationError naming the path (``unwritable``), never an OSError."""
    path = Path(path)
    refuse_special(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as exc:
        raise unwritable(path, exc) from None


def refuse_special(path: Path) -> None:
    """A DestinationError if ``path`` is a device, a FIFO or a socket: a rename onto it would replace it with a
    regular file (``-o /dev/full`` run as root replaced the device). A regular file, a link (the link is replaced,
    never what it points to), a folder (``unwritable`` says so) or nothing there pass."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise DestinationError(f"cannot write {path}: it is {_kind(mode)}, not a regular file; it is never replaced")


GLYPH_WARNING = r"Glyph \d+ .* missing from font"  # matplotlib's, for a character its font cannot draw


def write_figure(fig, path: Path, dpi: int = 110) -> Path:
    """A matplotlib figure written by ``write_file`` (atomically; a refusal is one DestinationError), in the format
    of the path's suffix (.png, .svg, .pdf). Returns the path.

    Labels in a script the font lacks (a class named 猫) are drawn as boxes: one note says which characters,
    where matplotlib warned twice per character, with a line of our source code each."""
    import io
    import logging
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(buf, format=Path(path).suffix.lower()[1:] or "png", dpi=dpi)
    missing: dict[str, None] = {}
    for w in caught:
        glyph = re.match(r"Glyph (\d+) ", str(w.message))
        if glyph and re.match(GLYPH_WARNING, str(w.message)):
            missing[chr(int(glyph.group(1)))] = None
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        logging.getLogger(__name__).info("%s: the font has no glyph for %s (drawn as boxes)", Path(path).name,
                                         " ".join(missing))
    write_file(path, buf.getvalue())
    return Path(path)


def unwritable(path: Path, exc: OSError) -> DestinationError:
    """The one-line error for ``exc``, raised while writing ``path`` (or its folders)."""
    path = Path(path)
    under = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    reason = (f"{under} is a file, not a folder" if under is not None else
              "it is a folder" if path.is_dir() and not isinstance(exc, PermissionError) else exc.strerror or str(exc))
    return DestinationError(f"cannot write {path}: {reason}")


def _whole_digest(path: Path) -> bytes | None:
    try:
        with open_regular(path) as f:
            return hashlib.file_digest(f, "blake2b").digest()
    except OSError:
        return None


def _duplicate_groups(scan: ScanResult) -> list[list[int]]:
    keys = np.fromiter((s.key for s in scan.sources), dtype=np.int64, count=len(scan.sources))
    known = np.flatnonzero(keys)
    if len(known) < 2:
        return []
    order = known[np.argsort(keys[known], kind="stable")]
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    groups = []
    for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        members = sorted(order[start:start + size].tolist())
        by_digest: dict[bytes, list[int]] = {}
        for i in members:  # equal keys: compared whole (only files of equal size, head and tail get here)
            digest = _whole_digest(scan.root / scan.sources[i].rel)
            if digest is not None:
                by_digest.setdefault(digest, []).append(i)
        groups += [g for g in by_digest.values() if len(g) > 1]
    return sorted(groups)


def _probe_or_reason(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[str, int, int, str, int] | str:
    try:
        return _probe(path, max_pixels, key=True)
    except ImageReadError as exc:
        return str(exc)


def _class_folders(root: Path) -> tuple[list[Path], list[Skipped]]:
    """The class folders of ``root`` (sorted, not hidden), and the folder links among them that are left out:
    one that leads to the source folder or above it (it would hold every class), or into another class."""
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    real_root = os.path.realpath(root)
    taken = {os.path.realpath(p): p.name for p in dirs if not p.is_symlink()}  # real path -> class folder
    keep, passed = [], []
    for p in dirs:
        if p.is_symlink():
            real = os.path.realpath(p)
            if _within(real_root, real):
                passed.append(Skipped(display_name(p.name), "class folder link leads to the source folder or above "
                                      "it (it would hold every class): not followed", bad=False))
                continue
            # into a class folder (a plain one, or an earlier link's target), or holding one: its images would be
            # labelled twice
            clash = next((q for q in taken if _within(real, q) or _within(q, real)), None)
            if clash is not None:
                passed.append(Skipped(display_name(p.name), f"class folder link leads into the class folder "
                                      f"{display_name(taken[clash])!r}: not followed", bad=False))
                continue
            taken[real] = p.name
        keep.append(p)
    return keep, passed


def scan_image_folder(root: Path, strict: bool = False, imap: Callable | None = None,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ScanResult:
    """Scan ``root/<class>/**/<image>``: classes are the sorted folder names, as torchvision's ImageFolder.

    Unreadable files are recorded in ``skipped`` with a reason (or, with ``strict``, raise SourceError);
    a class folder with no readable image is reported in ``empty_classes`` and left out. ``imap(fn, paths)``
    probes the image headers (a process pool's map for large folders; ``map`` by default), in order.
    An image whose header claims more than ``max_pixels`` pixels is skipped like an unreadable one (None: no
    limit). Non-regular files, folder links that would loop or leave their class, and unreadable sub-folders
    are passed over and named in ``skipped`` too (see ``walk_class``). ``classes`` are the output names of the
    class folders (``class_output_names``: the folder's own name unless it is not UTF-8, too long or reserved).
    """
    root = Path(root)
    if not root.exists():
        raise SourceError(f"source folder {root} does not exist")
    if not root.is_dir():
        raise SourceError(f"source {root} is not a folder")
    try:
        class_dirs, skipped = _class_folders(root)
    except OSError as exc:
        raise SourceError(f"cannot read source folder {root}: {exc.strerror or exc}") from None
    if not class_dirs:
        raise SourceError(f"{root} has no class folders; expected an ImageFolder: {root}/<class>/<image>")
    names = class_output_names([p.name for p in class_dirs])

    ignored = 0
    for p in sorted(root.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p.name) and p.is_file():
            skipped.append(Skipped(display_name(p.name), "image outside any class folder"))

    classes: list[str] = []
    folders: list[str] = []
    sources: list[Source] = []
    empty: list[str] = []
    used: set[str] = set()  # stems are unique across classes: a mixed image may land in another class folder
    candidates: list[list[Path]] = []
    for class_dir in class_dirs:
        files, passed = walk_class(class_dir, root, extensions=None)
        for s in passed:
            if strict and s.bad:
                raise SourceError(f"{s.rel}: {s.reason} (--strict)")
            skipped.append(s)
        candidates.append([p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS])
        ignored += len(files) - len(candidates[-1])
    probe = partial(_probe_or_reason, max_pixels=max_pixels)
    probes = iter((imap or map)(probe, [p for paths in candidates for p in paths]))
    for class_dir, name, paths in zip(class_dirs, names, candidates):
        found: list[tuple[str, str, int, int, str, int]] = []
        for path in paths:
            rel = path.relative_to(root).as_posix()
            result = next(probes)
            if isinstance(result, str):
                if strict:
                    raise SourceError(f"{display_name(rel)}: {result} (--strict)")
                skipped.append(Skipped(display_name(rel), result))
                continue
            found.append((rel, *result))
        if not found:
            empty.append(name)
            continue
        label = len(classes)
        classes.append(name)
        folders.append(class_dir.name)
        for rel, mode, width, height, fmt, key in found:
            stem = base = safe_stem(rel.split("/", 1)[1])
            n = 1
            while stem.lower() in used:
                n += 1
                stem = f"{base}-{n}"
            used.add(stem.lower())
            sources.append(Source(rel, label, stem, mode, width, height, fmt, key))
    if strict and empty:
        raise SourceError(f"class folder {empty[0]!r} has no readable image (--strict)")
    if not sources:
        raise SourceError(f"no readable image in {root}; expected {root}/<class>/<image> with "
                          f"{', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))} files")
    return ScanResult(root, classes, sources, skipped, empty, ignored, folders)
