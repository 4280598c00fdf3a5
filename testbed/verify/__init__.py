"""Expectations over protocol events, and the lab report's storyboard as one expectation set."""

from .expect import CaptureView, ExpectationFailed, SpecError, Verdict, match
from .storyboard import STATEMENTS, verify_storyboard

__all__ = ["CaptureView", "ExpectationFailed", "SpecError", "Verdict", "match", "STATEMENTS",
           "verify_storyboard"]
