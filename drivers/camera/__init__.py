"""The opt-in camera (OpenCV): QR self-identification and anonymous audience counts.

Imported only when the camera is enabled: importing it loads OpenCV.
"""

from drivers.camera.source import CameraSource, FrameAnalyzer

__all__ = ["CameraSource", "FrameAnalyzer"]
