"""The next-best-action model: an ONNX file that scores candidate offers, checked before it serves.

The contract (written by scripts/train_model.py): one input `features`, float32
[None, len(FEATURES)]; metadata `feature_spec_hash` equal to this gateway's `SPEC_HASH`,
`model_version`, `trained_at`, and `score_output` (+ `score_column` for a [N, 2] output) naming
the conversion probability. A file that breaks any of it is refused with the reason, and
whatever served before keeps serving.

onnxruntime and numpy are imported here only, when a model is loaded: a gateway without a
model never pays their memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.decision.features import FEATURES, SPEC_HASH

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["ModelError", "ModelInfo", "Scorer"]


class ModelError(ValueError):
    """A model file that cannot serve; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: Path
    version: str
    trained_at: str
    sha256: str


class Scorer:
    """One onnxruntime session: one call scores every candidate of a decision."""

    def __init__(self, session: Any, info: ModelInfo, output: str, column: int | None) -> None:
        self.session = session
        self.info = info
        self._output = output
        self._column = column

    @property
    def metadata(self) -> dict[str, str]:
        """The model's ONNX custom metadata (feature spec hash, version, training date, ...)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @classmethod
    def load(cls, path: Path) -> Scorer:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read: {exc.strerror}") from exc
        return cls.from_bytes(data, path)

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> Scorer:
        """A scorer from a model's bytes; `path` names it in errors and in `info`."""
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread, no spinning: decisions are small batches on a small shared box.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: not a loadable ONNX model ({exc})") from None
        meta = session.get_modelmeta().custom_metadata_map
        spec = meta.get("feature_spec_hash")
        if spec != SPEC_HASH:
            raise ModelError(
                f"{path}: trained on feature spec {spec!r}, this gateway speaks {SPEC_HASH!r}"
            )
        inputs = {i.name: i for i in session.get_inputs()}
        if "features" not in inputs or inputs["features"].shape[-1] != len(FEATURES):
            raise ModelError(f"{path}: expected an input 'features' of width {len(FEATURES)}")
        output = meta.get("score_output", "")
        if output not in {o.name for o in session.get_outputs()}:
            raise ModelError(f"{path}: metadata score_output {output!r} is not an output")
        column = int(meta["score_column"]) if meta.get("score_column") else None
        info = ModelInfo(
            path=path,
            version=meta.get("model_version", "unknown"),
            trained_at=meta.get("trained_at", "unknown"),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        scorer = cls(session, info, output, column)
        probe = scorer.score(np.zeros((2, len(FEATURES)), dtype=np.float32))
        if probe.shape != (2,) or not np.all(np.isfinite(probe)):
            raise ModelError(f"{path}: scores are not one finite number per row")
        return scorer

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """P(convert) per row, from one onnxruntime call."""
        import numpy as np

        (out,) = self.session.run([self._output], {"features": features})
        scores = np.asarray(out, dtype=np.float64)
        if scores.ndim == 2 and scores.shape[1] > 1:
            scores = scores[:, self._column if self._column is not None else 1]
        return scores.reshape(-1)
