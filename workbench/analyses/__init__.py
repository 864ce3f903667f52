"""Analyses: one per study, composing capture + kernels into a result dataclass."""
