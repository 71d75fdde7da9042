"""One camera: QR codes customers hold up, and how many faces look at a screen.

- The source is a V4L2 device ("/dev/video0", "/dev/v4l/by-id/..."), an rtsp:// or http(s)://
  stream (FFmpeg, with open and read timeouts), or a video file, which plays at its own frame
  rate and loops (the demo's and the tests' camera).
- A reader thread owns the capture: it opens it, reads as fast as the source delivers and keeps
  only the newest frame (a buffer of one; a frame overwritten before it was analysed is counted
  in `frames_dropped`), and releases it. Only that thread touches the capture, so a read stuck
  in the driver is abandoned, never released under its feet.
- The event loop takes the newest frame at most `process_fps` times a second and analyses it
  in one worker thread (`FrameAnalyzer`: QR codes with zxing-cpp, faces with OpenCV, limited to
  one core); `on_qr` and `on_faces` are called on the loop. Faces are counted at most every
  `audience_every_s` (a minute's peak needs no more; the face detector costs ~25x a QR read).
- No frame for `stall_timeout_s`, a failed open or a failed read: the component is degraded,
  the capture released, and the source reopened with jittered exponential backoff capped at
  `reopen_max_s`; ready again once frames flow.

Privacy: frames live in memory only. Nothing here writes, logs or sends a frame or anything
decoded from it (a QR code is a customer's token); logs carry states and counts.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, NoReturn
from urllib.parse import urlsplit

import cv2
import structlog
import zxingcpp
from cv2.data import haarcascades
from cv2.typing import MatLike

from gateway.runtime.clock import Clock
from gateway.runtime.config import STREAM_SCHEMES
from gateway.runtime.supervisor import Backoff, Handle

__all__ = ["CameraSource", "FrameAnalyzer"]

log = structlog.get_logger("gateway.camera")

_FACE_CASCADE = "haarcascade_frontalface_default.xml"
# Tuned on simulators.camera's scenes (0..4 faces, 100 seeds each, raw and JPEG): exact counts,
# no false positives on textured walls.
_FACE_SCALE_FACTOR = 1.15
_FACE_MIN_NEIGHBORS = 5
_FACE_MIN_PX = 48
_REOPEN_MIN_S = 0.5
_FILE_FPS_RANGE = (0.1, 240.0)  # a file's frame rate outside this is a broken header
_FILE_FPS_DEFAULT = 30.0
_FPS_WINDOW_S = 2.0  # processing_fps is measured over this
_READER_JOIN_S = 2.0  # on stop: how long to wait for the reader to release the device

SourceKind = Literal["v4l2", "stream", "file"]


class FrameAnalyzer:
    """The per-frame work: a QR code's text and the number of frontal faces, on one core.

    Not thread-safe: use one analyzer from one thread at a time. Frames bigger than `max_size`
    are scaled down first so the cost per frame stays bounded.
    """

    def __init__(
        self, *, qr: bool, audience: bool, max_size: tuple[int, int] | None = (640, 480)
    ) -> None:
        # Process-wide: OpenCV's own thread pool would take every core of a small box.
        cv2.setNumThreads(1)
        self._max_size = max_size
        # zxing-cpp, not OpenCV's two QR detectors (the classic one never found ~8 % of the
        # app's tokens, the ArUco one missed others): it read all 900 frames of the hardened set
        # at 1.1 ms a frame, where the pair read 99.8 % at 17.5 ms (docs/camera.md).
        self._qr = qr
        self._faces: cv2.CascadeClassifier | None = None
        if audience:
            self._faces = cv2.CascadeClassifier(haarcascades + _FACE_CASCADE)
            if self._faces.empty():
                raise RuntimeError(f"OpenCV cannot load {_FACE_CASCADE}")

    def analyze(self, frame: MatLike, *, faces: bool = True) -> tuple[str | None, int | None]:
        """(QR text or None, face count); each None when that analysis is off (`faces`:
        False skips the face count of this frame)."""
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        if self._max_size is not None:
            height, width = gray.shape[:2]
            scale = min(self._max_size[0] / width, self._max_size[1] / height)
            if scale < 1:
                size = (round(width * scale), round(height * scale))
                gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        text = _read_qr(gray) if self._qr else None
        count: int | None = None
        if self._faces is not None and faces:
            found = self._faces.detectMultiScale(
                gray,
                scaleFactor=_FACE_SCALE_FACTOR,
                minNeighbors=_FACE_MIN_NEIGHBORS,
                minSize=(_FACE_MIN_PX, _FACE_MIN_PX),
            )
            count = len(found)
        return text, count


_QR = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)


def _read_qr(gray: MatLike) -> str | None:
    """A code's text, or None. A token is printable ASCII; any other payload (binary, another
    encoding: anyone can hold one up) reads as no code at all, never as an exception."""
    found = zxingcpp.read_barcode(gray, formats=_QR)
    if found is None:
        return None
    data = bytes(found.bytes)
    return data.decode("ascii") if data and all(0x20 <= b < 0x7F for b in data) else None


def _kind(source: str) -> SourceKind:
    if source.startswith("/dev/"):
        return "v4l2"
    if urlsplit(source).scheme.lower() in STREAM_SCHEMES:
        return "stream"
    return "file"


def _redacted(source: str) -> str:
    """The source without credentials (rtsp://user:password@host/..., ?token=...), for logs."""
    parts = urlsplit(source)
    if not parts.scheme or not parts.hostname:
        return source
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


class _LatestFrame:
    """A buffer of one, shared by the reader thread (put) and the event loop (take).

    Only the current owner (the live reader) may put; a reader abandoned after a stall can't
    slip a stale frame in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: MatLike | None = None
        self._owner: object | None = None
        self.read = 0
        self.dropped = 0
        self.last_at = time.monotonic()  # when the last frame (or the owner) came

    def attach(self, owner: object | None) -> None:
        with self._lock:
            if self._frame is not None:
                self.dropped += 1
            self._frame, self._owner, self.last_at = None, owner, time.monotonic()

    def put(self, owner: object, frame: MatLike) -> bool | None:
        """None if `owner` is no longer the owner; else whether the buffer was empty."""
        with self._lock:
            if owner is not self._owner:
                return None
            was_empty = self._frame is None
            if not was_empty:
                self.dropped += 1
            self._frame, self.last_at = frame, time.monotonic()
            self.read += 1
            return was_empty

    def take(self) -> MatLike | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


@dataclass(frozen=True, slots=True)
class _Params:
    source: str
    kind: SourceKind
    width: int
    height: int
    timeout_ms: int
    niceness: int


def run_below_the_loop(niceness: int) -> None:
    """This thread at a lower CPU priority (Linux keeps a nice value per thread): on a store box's
    one busy core the event loop, which every touchpoint waits on, preempts the camera's work
    at once instead of waiting out its time slice; frames are dropped instead (one buffered)."""
    if niceness <= 0:
        return
    thread = threading.get_native_id()
    with suppress(OSError):  # not Linux, or a sandbox that forbids it: run as it is
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, nice + niceness))


class _Reader:
    """A thread that owns one capture for its whole life: open, read into `latest`, release."""

    def __init__(self, params: _Params, latest: _LatestFrame, notify: Callable[[], None]) -> None:
        # Daemon: a read stuck in a driver must not keep the process from exiting.
        self._thread = threading.Thread(target=self._run, name="camera-reader", daemon=True)
        self._params = params
        self._latest = latest
        self._notify = notify
        self._stop = threading.Event()
        self.lost: str | None = None  # why reading ended; set before notify

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        run_below_the_loop(self._params.niceness)
        capture: cv2.VideoCapture | None = None
        try:
            capture = self._open()
            if capture is None:
                self._end("cannot open the source")
            else:
                self._read(capture)
        except cv2.error:  # its message may name the source (a URL with a password): not kept
            self._end("OpenCV error")
        finally:
            if capture is not None:
                capture.release()

    def _open(self) -> cv2.VideoCapture | None:
        p = self._params
        if p.kind == "v4l2":
            capture = cv2.VideoCapture(p.source, cv2.CAP_V4L2)
            if capture.isOpened():
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, p.width)
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, p.height)
        elif p.kind == "stream":
            timeouts = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                p.timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                p.timeout_ms,
            ]
            capture = cv2.VideoCapture(p.source, cv2.CAP_FFMPEG, timeouts)
        else:
            capture = cv2.VideoCapture(p.source, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _read(self, capture: cv2.VideoCapture) -> None:
        interval = 0.0
        if self._params.kind == "file":
            # A file plays at its recorded rate, like the camera that made it, not flat out.
            fps = capture.get(cv2.CAP_PROP_FPS)
            low, high = _FILE_FPS_RANGE
            interval = 1 / (fps if low <= fps <= high else _FILE_FPS_DEFAULT)
        due = time.monotonic()
        while not self._stop.is_set():
            ok, frame = capture.read()
            if not ok and self._params.kind == "file":
                # End of file: loop, unless the file was taken away (the test's unplugged camera).
                if not Path(self._params.source).exists():
                    self._end("the source file is gone")
                    return
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
            if not ok:
                self._end("read failed")
                return
            was_empty = self._latest.put(self, frame)
            if was_empty is None:  # abandoned after a stall: a new reader owns the buffer
                return
            if was_empty:
                self._notify()
            if interval:
                due = max(due + interval, time.monotonic())  # late: no catch-up burst
                self._stop.wait(due - time.monotonic())

    def _end(self, reason: str) -> None:
        self.lost = reason
        self._notify()


class _SourceLost(Exception):
    pass


class CameraSource:
    """A supervisor component: one camera feeding `on_qr(text)` and `on_faces(count, at)`."""

    name = "camera"
    requires: tuple[str, ...] = ()

    def __init__(
        self,
        source: str,
        *,
        qr: bool,
        audience: bool,
        on_qr: Callable[[str], None],
        on_faces: Callable[[int, float], None],
        clock: Clock,
        process_fps: float = 5.0,
        stall_timeout_s: float = 5.0,
        reopen_max_s: float = 30.0,
        width: int = 640,
        height: int = 480,
        audience_every_s: float = 1.0,
        niceness: int = 10,
    ) -> None:
        if process_fps <= 0 or stall_timeout_s <= 0 or reopen_max_s <= 0:
            raise ValueError("process_fps, stall_timeout_s and reopen_max_s must be positive")
        self._params = _Params(
            source,
            _kind(source),
            width,
            height,
            timeout_ms=round(stall_timeout_s * 1000),
            niceness=niceness,
        )
        self._qr, self._audience = qr, audience
        self._on_qr, self._on_faces = on_qr, on_faces
        self._clock = clock
        self._period = 1 / process_fps
        self._audience_every_s = audience_every_s
        self._stall_timeout_s = stall_timeout_s
        self._backoff = Backoff(min(_REOPEN_MIN_S, reopen_max_s), reopen_max_s, random.Random())
        self._latest = _LatestFrame()
        self._wake = asyncio.Event()  # a frame came into the empty buffer, or the reader ended
        self._processed_at: deque[float] = deque()
        self.frames_processed = 0
        self.reopens = 0
        self._log = log.bind(source=_redacted(source), kind=self._params.kind)

    @property
    def frames_read(self) -> int:
        return self._latest.read

    @property
    def frames_dropped(self) -> int:
        """Frames read but overwritten by a newer one before they were analysed."""
        return self._latest.dropped

    @property
    def processing_fps(self) -> float:
        """Frames analysed per second over the last couple of seconds."""
        since = time.monotonic() - _FPS_WINDOW_S
        # A copy: the loop appends while a metrics thread may be reading.
        return sum(t >= since for t in list(self._processed_at)) / _FPS_WINDOW_S

    def _forget_old(self, now: float) -> None:
        while self._processed_at and self._processed_at[0] < now - _FPS_WINDOW_S:
            self._processed_at.popleft()

    async def run(self, handle: Handle) -> None:
        loop = asyncio.get_running_loop()
        analyzer = FrameAnalyzer(
            qr=self._qr, audience=self._audience, max_size=(self._params.width, self._params.height)
        )
        # One worker: frames are analysed one at a time, on one core, off the loop.
        pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="camera-analyze",
            initializer=run_below_the_loop,
            initargs=(self._params.niceness,),
        )
        reader: _Reader | None = None
        try:
            while True:
                if reader is not None:
                    self.reopens += 1
                reader = _Reader(self._params, self._latest, self._notifier(loop))
                self._latest.attach(reader)
                self._wake.clear()
                reader.start()
                try:
                    await self._serve(reader, handle, loop, pool, analyzer)
                except _SourceLost as exc:
                    lost = str(exc)
                finally:
                    self._latest.attach(None)
                    reader.stop()
                delay = self._backoff.next()
                self._log.warning(
                    "camera lost",
                    reason=lost,
                    reopen_in_s=round(delay, 2),
                    frames_read=self.frames_read,
                    frames_dropped=self.frames_dropped,
                    frames_processed=self.frames_processed,
                )
                handle.degraded(f"{lost}; reopening in {delay:.1f}s")
                await asyncio.sleep(delay)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if reader is not None:
                reader.stop()
                await self._join(reader)

    def _notifier(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        def notify() -> None:
            with suppress(RuntimeError):  # the loop closed while a reader was finishing
                loop.call_soon_threadsafe(self._wake.set)

        return notify

    async def _serve(
        self,
        reader: _Reader,
        handle: Handle,
        loop: asyncio.AbstractEventLoop,
        pool: ThreadPoolExecutor,
        analyzer: FrameAnalyzer,
    ) -> NoReturn:
        """Analyse the newest frame at most process_fps times a second until the source is lost."""
        ready = False
        due = loop.time()
        faces_due = 0.0
        while True:
            await asyncio.sleep(due - loop.time())
            frame = await self._next_frame(reader)
            if not ready:
                ready = True
                self._backoff.reset()
                height, width = frame.shape[:2]
                self._log.info("camera streaming", width=width, height=height)
                handle.ready(f"{width}x{height} from {_redacted(self._params.source)}")
            due = loop.time() + self._period
            count_faces = loop.time() >= faces_due
            if count_faces:
                faces_due = loop.time() + self._audience_every_s
            text, faces = await loop.run_in_executor(
                pool, partial(analyzer.analyze, frame, faces=count_faces)
            )
            del frame  # the only reference: the frame is gone once analysed
            now = time.monotonic()
            self.frames_processed += 1
            self._processed_at.append(now)
            self._forget_old(now)
            if text is not None:
                self._on_qr(text)
            if faces is not None:
                self._on_faces(faces, self._clock.now())

    async def _next_frame(self, reader: _Reader) -> MatLike:
        """The newest frame, waiting for one; _SourceLost if the reader ended or stalled."""
        while True:
            self._wake.clear()  # before take: a put after it sets the event again
            frame = self._latest.take()
            if frame is not None:
                return frame
            if reader.lost is not None:
                raise _SourceLost(reader.lost)
            silent = time.monotonic() - self._latest.last_at
            if silent >= self._stall_timeout_s:
                raise _SourceLost(f"no frame for {self._stall_timeout_s:g}s")
            try:
                async with asyncio.timeout(self._stall_timeout_s - silent):
                    await self._wake.wait()
            except TimeoutError:
                pass

    @staticmethod
    async def _join(reader: _Reader) -> None:
        """Give the reader a moment to release the device; a read stuck in the driver is left."""
        await asyncio.to_thread(reader.join, _READER_JOIN_S)
