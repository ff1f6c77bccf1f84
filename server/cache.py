"""A byte-bounded LRU cache of synthesized segment audio.

Only deterministic synthesis is cached: with noise_scale = noise_w = 0 the
model maps (voice, phoneme ids, speaker, length scale) to one waveform.
With noise on, every run is meant to differ, so nothing is stored. Entries
are whole segments, which repeat in practice (greetings, prompts, menus).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable, Optional

import numpy as np


class AudioCache:
    """LRU of float32 audio arrays, at most `max_bytes` in total."""

    def __init__(self, max_bytes: int):
        """:param max_bytes: bound on the audio bytes held; 0 disables the cache."""
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[np.ndarray, Optional[np.ndarray]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
        """The cached (audio, durations) for `key` (read-only), or None."""
        with self._lock:
            audio = self._entries.get(key)
            if audio is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return audio

    def put(self, key: Hashable, audio: np.ndarray, durations: Optional[np.ndarray] = None) -> None:
        """Store a segment's audio and its durations per id (frozen, not copied; they give
        word timings again), evicting the least recently used."""
        size = _nbytes(audio, durations)
        if size > self.max_bytes:
            return
        for array in (audio, durations):
            if array is not None:
                array.flags.writeable = False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= _nbytes(*old)
            self._entries[key] = (audio, durations)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= _nbytes(*evicted)


def _nbytes(audio: np.ndarray, durations: Optional[np.ndarray]) -> int:
    return audio.nbytes + (durations.nbytes if durations is not None else 0)
