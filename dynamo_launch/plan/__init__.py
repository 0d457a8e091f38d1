"""The launch plan: what runs where, in which order, with which flags (pure)."""

from .build import build
from .spec import Env, Gang, Gate, Plan, PlanHost, Probe, ProbeKind, ProcessSpec

__all__ = ["Env", "Gang", "Gate", "Plan", "PlanHost", "ProcessSpec", "Probe", "ProbeKind", "build"]
