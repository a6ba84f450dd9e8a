"""The bounded queue between a source (audio callback or file reader) and the worker."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from .stats import LoopStats


@dataclass(slots=True)
class Block:
    """One block from a source: ``data`` [frames, channels] float32 at ``rate``; ``arrival`` is when it
    was queued (``time.monotonic()``); a new ``stream_id`` marks a discontinuity (device reopened);
    ``gap`` says that audio was lost just before this block (blocks dropped, a driver overflow)."""

    data: np.ndarray
    rate: float
    stream_id: int
    arrival: float
    gap: bool = False


END_OF_STREAM = object()  # a file source has delivered everything


class BlockQueue:
    """A bounded queue that counts what it cannot take."""

    def __init__(self, maxsize: int, stats: LoopStats):
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stats = stats
        self._gap = False  # a block was dropped: the next one queued follows a gap

    def offer(self, block: Block) -> bool:
        """Non-blocking put (audio callbacks, one producer): a full queue drops the block and counts it, and
        the next block that gets in is flagged ``gap``."""
        self.stats.blocks += 1
        if self._gap:
            block.gap = True
        try:
            self.queue.put_nowait(block)
        except queue.Full:
            self.stats.dropped_blocks += 1
            self.stats.dropped_seconds += len(block.data) / block.rate
            self._gap = True
            return False
        self._gap = False
        return True

    def put_wait(self, item, stop: threading.Event) -> bool:
        """Blocking put that gives up when ``stop`` is set (fast replays, end-of-stream marker)."""
        if isinstance(item, Block):
            self.stats.blocks += 1
        while not stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float):
        return self.queue.get(timeout=timeout)

    def depth(self) -> int:
        return self.queue.qsize()
