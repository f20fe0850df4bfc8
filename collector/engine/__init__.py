"""The GC engine: per-repository contexts, one collector per object kind, a fixpoint runner."""

from collector.engine.callbacks import Callbacks
from collector.engine.context import (
    Clock,
    EngineConfig,
    Mode,
    Report,
    SystemClock,
)
from collector.engine.runner import Engine

__all__ = [
    "Callbacks",
    "Clock",
    "Engine",
    "EngineConfig",
    "Mode",
    "Report",
    "SystemClock",
]
