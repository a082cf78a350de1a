"""Camera-like EXIF blocks for tests and benches: an orientation and the JPEG thumbnail that camera files carry
(IFD1, 160x120 in the DCF standard), built byte by byte (Pillow writes no IFD1 thumbnail)."""

from __future__ import annotations

import struct

import cv2
import numpy as np


def exif_block(orientation: int = 1, thumbnail: bytes | None = None, order: str = "<") -> bytes:
    """A TIFF structure as an APP1 segment holds it after ``Exif\\0\\0``: IFD0 with the orientation, then IFD1
    with the thumbnail (compression 6, offset, length) when one is given, then the thumbnail's bytes."""
    head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    ifd1_at = 8 + 2 + 12 + 4 if thumbnail else 0
    ifd0 = struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    ifd0 += struct.pack(order + "I", ifd1_at)
    if not thumbnail:
        return head + ifd0
    data_at = ifd1_at + 2 + 3 * 12 + 4
    ifd1 = struct.pack(order + "H", 3)
    ifd1 += struct.pack(order + "HHIHH", 0x0103, 3, 1, 6, 0)
    ifd1 += struct.pack(order + "HHII", 0x0201, 4, 1, data_at)
    ifd1 += struct.pack(order + "HHII", 0x0202, 4, 1, len(thumbnail))
    ifd1 += struct.pack(order + "I", 0)
    return head + ifd0 + ifd1 + thumbnail


def with_exif(jpeg: bytes, tiff: bytes) -> bytes:
    """A JPEG's bytes with an EXIF APP1 segment inserted right after its start-of-image marker."""
    assert jpeg[:2] == b"\xff\xd8"
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def camera_jpeg(rgb: np.ndarray, quality: int = 92, orientation: int = 1, thumb_side: int = 160,
                thumbnail: np.ndarray | None = None, order: str = "<") -> bytes:
    """``rgb`` (as stored, before orientation) as a camera would write it: a JPEG with an EXIF orientation and
    a thumbnail of ``thumb_side`` on the long side (or the given ``thumbnail`` pixels, e.g. a padded one)."""
    h, w = rgb.shape[:2]
    if thumbnail is None:
        s = thumb_side / max(h, w)
        thumbnail = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, thumb = cv2.imencode(".jpg", cv2.cvtColor(thumbnail, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    ok2, main = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok and ok2
    return with_exif(main.tobytes(), exif_block(orientation, thumb.tobytes(), order))
