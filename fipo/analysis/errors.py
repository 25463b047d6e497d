"""Errors that name what is missing and how to make it, raised before any plotting starts."""

from __future__ import annotations


class AnalysisError(Exception):
    """Base class: a run, a metric or a file an artifact needs is missing or unreadable."""


class MissingRunError(AnalysisError):
    def __init__(self, run: str, path, hint: str = ""):
        self.run, self.path = run, path
        super().__init__(f"run {run}: {path} not found" + (f" ({hint})" if hint else ""))


class MissingMetricError(AnalysisError):
    def __init__(self, run: str, metric: str, needed_by: str = "", hint: str = ""):
        self.run, self.metric = run, metric
        by = f" needed by {needed_by}" if needed_by else ""
        super().__init__(f"run {run} has no metric {metric!r}{by}" + (f": {hint}" if hint else ""))


class MalformedLogError(AnalysisError):
    def __init__(self, path, line: int, reason: str):
        self.path, self.line = path, line
        super().__init__(f"{path}, line {line}: {reason}")
