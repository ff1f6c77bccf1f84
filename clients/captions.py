"""speakstream-say's word timings: captions printed as each word is heard, and the --timestamps file.

Both read a `clients.heard.Transcript` that the receiver fills with the
words of every call, their spans and samples already placed in the whole
text and the whole audio (docs/API.md, Timestamps).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable, TextIO

from clients.heard import Transcript
from clients.player import Player

# finish() waits this long past the last word's moment before giving up on it.
_LATE_S = 1.0


class Captions:
    """Prints each word of `transcript` on `out`, one a line, when the sound card plays its first sample.

    A thread takes the words in order and, for each, asks the player when
    its first sample is heard (Player.heard_at, the device's clock): it
    sleeps until then, or, while that is not known yet (the audio has not
    reached the player, or playback waits after an underrun), until the
    player reports a change (Player.wait_change). The receiver calls
    update() when words arrive.

    :param on_broken_pipe: called once if `out` is a pipe whose reader has gone (captions then stop).
    """

    def __init__(self, transcript: Transcript, player: Player, out: TextIO, on_broken_pipe: Callable[[], None]):
        self._transcript, self._player, self._out = transcript, player, out
        self._on_broken_pipe = on_broken_pipe
        self._changed = threading.Condition()
        self._closed = False  # no more words will come
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="speakstream-captions", daemon=True)
        self._thread.start()

    def update(self) -> None:
        """Words were added to the transcript."""
        with self._changed:
            self._changed.notify_all()

    def finish(self) -> None:
        """No more words: print the rest at their moments (playback has ended), then stop."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        words = self._transcript.words
        at = self._player.heard_at(words[-1].start) if words else None
        self._thread.join(_LATE_S + (max(0.0, at - time.monotonic()) if at is not None else 0.0))
        self.stop()

    def stop(self) -> None:
        """Print nothing more (playback stopped)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._player.wake()
        self._thread.join()

    def _run(self) -> None:
        index = 0
        while True:
            word = self._next_word(index)
            if word is None or not self._wait_heard(word.start):
                return
            try:
                print(word.text, file=self._out, flush=True)
            except BrokenPipeError:
                self._on_broken_pipe()
                return
            index += 1

    def _next_word(self, index: int):
        """Word `index` once the transcript has it; None when stopped or closed before."""
        words = self._transcript.words
        with self._changed:
            self._changed.wait_for(lambda: self._stopped or self._closed or len(words) > index)
            return None if self._stopped or len(words) <= index else words[index]

    def _wait_heard(self, frame: int) -> bool:
        """Wait until audio frame `frame` is heard; False when stopped first."""
        player = self._player
        while not self._stopped:
            seen = player.changes
            at = player.heard_at(frame)
            if at is None:
                player.wait_change(seen)
                continue
            delay = at - time.monotonic()
            if delay <= 0:
                return True
            with self._changed:
                # Woken early only by stop(); then heard_at is asked again, as an
                # underrun before the frame moves its moment later.
                self._changed.wait_for(lambda: self._stopped, delay)
        return False


def timestamps_json(transcript: Transcript) -> list[dict]:
    """The --timestamps records: each word, its seconds and samples in the whole audio, its span in the text."""
    rate = transcript.sample_rate
    return [{"word": w.text, "start": round(w.start / rate, 6), "end": round(w.end / rate, 6),
             "start_sample": w.start, "end_sample": w.end, "text_start": w.span[0], "text_end": w.span[1]}
            for w in transcript.words]


def write_timestamps(out: TextIO, transcript: Transcript) -> None:
    """Write timestamps_json as a JSON array, one word a line."""
    records = [json.dumps(record, ensure_ascii=False) for record in timestamps_json(transcript)]
    out.write("[\n" + ",\n".join(records) + "\n]\n" if records else "[]\n")
