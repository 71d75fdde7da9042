"""`scripts/bench.py camera` (QR part): today's OpenCV pair against zxing-cpp on the same frames.

The frames are 640x480 scenes from `simulators.camera.qr_frame` holding app tokens (the shape the
app shows: "gw1." + 140 base64url characters, a version 10 code at level M): 400 plain, then the
first 100 tokens again under each hardening: blur (Gaussian, sigma 1.5), noise (sigma 28), an
angle (rotated 25 degrees, 4 px modules so it stays in the frame), low light (a third of the
light, noise 10), small (3 px modules).
Each reader sees the same BGR frames as the camera gives them, on one core; read rate is the
share of frames whose token is read back exactly; ms per frame the median over the whole set;
fps is 1000 / the mean ms. Readers: the camera's own (FrameAnalyzer), the OpenCV pair it used
before issue 19 (reproduced here), and bare zxing-cpp.
"""

from __future__ import annotations

import base64
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from simulators.camera import qr_frame

HARDENINGS = ("blur", "noise", "angle", "low_light", "small")
Reader = Callable[[Any], str | None]


def tokens(count: int = 400, seed: int = 2026) -> list[str]:
    rng = random.Random(seed)
    return ["gw1." + base64.urlsafe_b64encode(rng.randbytes(105)).decode() for _ in range(count)]


def frame(token: str, condition: str, seed: int) -> Any:
    if condition == "small":
        return qr_frame(token, module_px=3, seed=seed)
    if condition == "noise":
        return qr_frame(token, noise=28.0, seed=seed)
    if condition == "low_light":
        dark = qr_frame(token, noise=0.0, seed=seed).astype(np.float32) / 3
        rng = np.random.default_rng(seed)
        return np.clip(dark + rng.normal(0, 10, dark.shape), 0, 255).astype(np.uint8)
    if condition == "angle":  # 4 px modules: the turned code stays inside the frame
        image = qr_frame(token, module_px=4, seed=seed)
        height, width = image.shape[:2]
        turn = cv2.getRotationMatrix2D((width / 2, height / 2), 25, 1.0)
        return cv2.warpAffine(image, turn, (width, height), borderMode=cv2.BORDER_REPLICATE)
    image = qr_frame(token, seed=seed)
    if condition == "blur":
        return cv2.GaussianBlur(image, (0, 0), 1.5)
    return image


def frame_set(plain: int = 400, hardened: int = 100) -> list[tuple[str, str, Any]]:
    """(condition, token, frame): the plain set, then each hardening on its first tokens."""
    batch = tokens(plain)
    out = [("plain", t, frame(t, "plain", i)) for i, t in enumerate(batch)]
    for condition in HARDENINGS:
        out += [(condition, t, frame(t, condition, i)) for i, t in enumerate(batch[:hardened])]
    return out


def camera() -> Reader:
    """The camera's own reader (drivers/camera's FrameAnalyzer, zxing-cpp since issue 19)."""
    from drivers.camera import FrameAnalyzer

    analyzer = FrameAnalyzer(qr=True, audience=False)
    return lambda image: analyzer.analyze(image)[0]


def opencv_pair() -> Reader:
    """The camera's reader before issue 19: a light blur, OpenCV's classic QR detector, and
    its ArUco-based one when the first reads nothing."""
    cv2.setNumThreads(1)
    classic, aruco = cv2.QRCodeDetector(), cv2.QRCodeDetectorAruco()

    def read(image: Any) -> str | None:
        smooth = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (3, 3), 0)
        for detector in (classic, aruco):
            try:
                text, _, _ = detector.detectAndDecode(smooth)
            except UnicodeDecodeError:
                return None
            if text:
                return str(text)
        return None

    return read


def zxing() -> Reader | None:
    try:
        import zxingcpp
    except ImportError:
        return None
    cv2.setNumThreads(1)
    qr = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)

    def read(image: Any) -> str | None:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        found = zxingcpp.read_barcode(gray, formats=qr)
        return None if found is None else str(found.text)

    return read


def measure(read: Reader, frames: list[tuple[str, str, Any]]) -> dict[str, float]:
    """Read rate per condition and overall, and ms per frame (median and p99)."""
    read(frames[0][2])  # warm-up
    hits: dict[str, list[bool]] = {}
    took = []
    for condition, token, image in frames:
        start = time.perf_counter()
        text = read(image)
        took.append((time.perf_counter() - start) * 1000)
        hits.setdefault(condition, []).append(text == token)
    figures = {f"read_rate_{c}": sum(h) / len(h) for c, h in hits.items()}
    hardened = [ok for c, h in hits.items() for ok in h]
    figures["read_rate"] = sum(hardened) / len(hardened)
    figures["ms_per_frame"] = statistics.median(took)
    figures["ms_per_frame_p99"] = sorted(took)[round(0.99 * (len(took) - 1))]
    figures["fps"] = 1000 / statistics.mean(took)
    return figures


def bench_qr(quick: bool) -> dict[str, float]:
    """camera_qr_read_rate and camera_qr_fps_hardened (the camera's reader on the hardened set;
    bench.py's camera_qr_fps loops over 5 plain frames), with the OpenCV pair's and bare
    zxing-cpp's figures beside them."""
    frames = frame_set(100, 25) if quick else frame_set()
    ours = measure(camera(), frames)
    out: dict[str, float] = {
        "camera_qr_frames": len(frames),
        "camera_qr_read_rate": ours["read_rate"],
        "camera_qr_fps_hardened": ours["fps"],
        "camera_qr_ms_per_frame": ours["ms_per_frame"],
    }
    readers = {"opencv_pair": opencv_pair(), "zxing": zxing()}
    for name, read in readers.items():
        if read is None:
            continue
        for key, value in measure(read, frames).items():
            out[f"camera_qr_{name}_{key}"] = value
    return out
