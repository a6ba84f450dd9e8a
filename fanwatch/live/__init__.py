"""The real-time loop, one module per concern:

* :mod:`~fanwatch.live.settings`: frozen settings grouped by concern, every default;
* :mod:`~fanwatch.live.stats`: constant-memory percentiles and the loop's counters;
* :mod:`~fanwatch.live.blocks`: the bounded queue between a source and the worker;
* :mod:`~fanwatch.live.sources`: the :class:`Source` protocol, a live device and a replayed file;
* :mod:`~fanwatch.live.decisions`: debouncers, window counts from seconds and the hop;
* :mod:`~fanwatch.live.analyzer`: the public streaming API (samples in, window results out);
* :mod:`~fanwatch.live.report`: console lines, JSON Lines, the event log, record sinks;
* :mod:`~fanwatch.live.supervisor`: :func:`run`, the worker thread, device supervision.
"""

from ..card import resolve_channel
from .analyzer import Analyzer, Classifier, WindowResult, live_channels, to_mono
from .blocks import END_OF_STREAM, Block, BlockQueue
from .decisions import AlertDebouncer, StateDebouncer, WindowCounts, window_counts
from .report import RecordSink, Reporter
from .settings import (
    DEFAULT_MODEL,
    MAX_MEAN_CHANNELS,
    DecisionSettings,
    InputSettings,
    LoopSettings,
    ModelSettings,
    OutputSettings,
    SupervisionSettings,
    build,
)
from .sources import DeviceConfigError, DeviceError, SoundDeviceSource, Source, WavSource, list_devices, parse_device
from .stats import Histogram, LoopStats
from .supervisor import Worker, backoff_delays, resolve_hop, run, start_record

__all__ = [
    "DEFAULT_MODEL",
    "END_OF_STREAM",
    "MAX_MEAN_CHANNELS",
    "AlertDebouncer",
    "Analyzer",
    "Block",
    "BlockQueue",
    "Classifier",
    "DecisionSettings",
    "DeviceConfigError",
    "DeviceError",
    "Histogram",
    "InputSettings",
    "LoopSettings",
    "LoopStats",
    "ModelSettings",
    "OutputSettings",
    "RecordSink",
    "Reporter",
    "SoundDeviceSource",
    "Source",
    "StateDebouncer",
    "SupervisionSettings",
    "WavSource",
    "WindowCounts",
    "WindowResult",
    "Worker",
    "backoff_delays",
    "build",
    "list_devices",
    "live_channels",
    "parse_device",
    "resolve_channel",
    "resolve_hop",
    "run",
    "start_record",
    "to_mono",
    "window_counts",
]
