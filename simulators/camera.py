"""A camera in a box: BGR frames (numpy, 640x480 by default) with QR codes or faces, and videos.

The frames are what a shop camera would see, made reproducible by a seed: a textured wall with
sensor noise, a customer's QR code held up slightly off centre (drawn with segno, decodable by
zxing-cpp and OpenCV), or 0..4 frontal faces (copies of the one in scikit-image's astronaut
sample, scikit-image being a dev dependency only) at different places and sizes, tuned so the
gateway's Haar detector finds exactly that many.

`write_video` writes frames as an MJPG .avi, which the gateway's camera driver opens like a
camera (it plays a file at its frame rate, looping). This is the simulator writing fixtures for
tests, the demo and benchmarks; the gateway itself never writes a frame.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import segno

__all__ = ["Frame", "audience_frame", "blank_frame", "qr_frame", "write_video"]

Frame = npt.NDArray[np.uint8]

_QUIET_MODULES = 4  # the quiet zone a QR code needs around it
# The astronaut's face (Haar box x=176, y=65, w=h=98 in the 512x512 photo) with some head and
# shoulders around it, as a detector sees a face in a crowd.
_FACE_CROP = (slice(30, 200), slice(150, 300))  # rows, columns: 170 x 150
# Up to four faces, one per quadrant, each at its own scale (face widths ~75..120 px at 640x480).
_FACE_SCALES = (1.2, 0.85, 1.05, 0.75)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """A lit wall: a soft gradient plus blurred, low-contrast texture (float, 0..255).

    Stronger, sharper texture makes blobs the Haar cascade takes for faces: with this one, 100
    seeds x 0..4 faces (raw and JPEG) give exact counts.
    """
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xs / width + np.sin(angle) * ys / height) * 40
    texture = rng.normal(0, 15, (height // 8 + 1, width // 8 + 1)).astype(np.float32)
    texture = np.asarray(cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC))
    texture = np.asarray(cv2.GaussianBlur(texture, (0, 0), 8), np.float32)
    base = rng.uniform(140, 180, 3).astype(np.float32)  # a slightly coloured wall
    gray = 150 + gradient + texture - gradient.mean()
    wall: npt.NDArray[np.float32] = np.clip(gray[..., None] * (base / base.mean()), 0, 255)
    return wall


def _finish(image: npt.NDArray[np.float32], rng: np.random.Generator, noise: float) -> Frame:
    """Sensor noise, then 8 bits."""
    if noise > 0:
        image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def blank_frame(*, size: tuple[int, int] = (640, 480), noise: float = 8.0, seed: int = 0) -> Frame:
    """The wall with nobody in front of it."""
    rng = np.random.default_rng(seed)
    return _finish(_background(rng, size), rng, noise)


def qr_frame(
    text: str | bytes,
    *,
    size: tuple[int, int] = (640, 480),
    module_px: int = 6,
    noise: float = 8.0,
    seed: int = 0,
) -> Frame:
    """`text` as a QR code (error correction M) held up near the centre of the frame; bytes
    make a byte-mode code that need not be UTF-8 (a hostile one)."""
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    matrix = np.array(segno.make_qr(text, error="m", boost_error=False).matrix, dtype=bool)
    modules = np.pad(matrix, _QUIET_MODULES, constant_values=False)
    code = np.where(modules, 25.0, 235.0).astype(np.float32)  # printed ink on paper, not 0/255
    code = np.kron(code, np.ones((module_px, module_px), np.float32))
    side = code.shape[0]
    width, height = size
    if side > min(width, height):
        raise ValueError(f"a {side}px QR code does not fit {width}x{height}; lower module_px")
    # A slight offset from the centre, as a hand holds a phone.
    top = (height - side) // 2 + int(rng.integers(-(height - side) // 4, (height - side) // 4 + 1))
    left = (width - side) // 2 + int(rng.integers(-(width - side) // 4, (width - side) // 4 + 1))
    image[top : top + side, left : left + side] = code[..., None]
    return _finish(image, rng, noise)


@cache
def _face() -> Frame:
    """The frontal face crop (BGR) from scikit-image's astronaut photo."""
    from skimage import data

    rgb = data.astronaut()[_FACE_CROP]  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(rgb[..., ::-1], dtype=np.uint8)


def audience_frame(
    n_faces: int, *, size: tuple[int, int] = (640, 480), noise: float = 4.0, seed: int = 0
) -> Frame:
    """`n_faces` (0..4) people facing the camera: one per quadrant, each at its own scale."""
    if not 0 <= n_faces <= len(_FACE_SCALES):
        raise ValueError(f"n_faces must be 0..{len(_FACE_SCALES)}, got {n_faces}")
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    width, height = size
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (row, column) quadrants
    random.Random(seed).shuffle(cells)
    face = _face()
    for (row, col), scale in zip(cells[:n_faces], _FACE_SCALES, strict=False):
        fh, fw = (round(d * scale * width / 640) for d in face.shape[:2])
        scaled = cv2.resize(face, (fw, fh), interpolation=cv2.INTER_AREA)
        cell_w, cell_h = width // 2, height // 2
        if fw > cell_w or fh > cell_h:
            raise ValueError(f"{width}x{height} is too small for {n_faces} faces")
        top = row * cell_h + int(rng.integers(0, cell_h - fh + 1))
        left = col * cell_w + int(rng.integers(0, cell_w - fw + 1))
        image[top : top + fh, left : left + fw] = scaled
    return _finish(image, rng, noise)


def write_video(path: Path, frames: Sequence[Frame], fps: float = 10) -> Path:
    """`frames` (same size, BGR) as an MJPG .avi at `fps`; the path."""
    if not frames:
        raise ValueError("no frames to write")
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write an MJPG video to {path}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path
