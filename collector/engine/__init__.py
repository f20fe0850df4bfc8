"""The GC engine: per-repository contexts, one collector per object kind, a fixpoint runner."""

from collector.engine.callbacks import Callbacks
from collector.engine.context import EngineConfig, Report
from collector.engine.outcomes import Cause, Deferred, ExpiredTag, Finished, Outcome
from collector.engine.repositories import find as find_repository
from collector.engine.runner import Engine

__all__ = [
    "Callbacks",
    "Cause",
    "Deferred",
    "Engine",
    "EngineConfig",
    "ExpiredTag",
    "Finished",
    "Outcome",
    "Report",
    "find_repository",
]
