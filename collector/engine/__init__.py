"""The GC engine: per-repository contexts, one collector per object kind, a fixpoint runner."""

from collector.engine.callbacks import Callbacks
from collector.engine.context import EngineConfig, Mode, Report
from collector.engine.runner import Engine

__all__ = [
    "Callbacks",
    "Engine",
    "EngineConfig",
    "Mode",
    "Report",
]
