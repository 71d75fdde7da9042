"""Flows that are not a moment: device events (accept, then acknowledge), the camera, print jobs."""
