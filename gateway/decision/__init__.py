"""Choosing the next best action for a moment (rule-based until the ONNX engine lands)."""

from gateway.decision.rules import POLICY, Choice, Context, choose, daypart

__all__ = ["POLICY", "Choice", "Context", "choose", "daypart"]
