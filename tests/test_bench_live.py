"""The live benchmark measures what it says: its clauses are the server's, every clause is timed."""

from __future__ import annotations

import time

import pytest

from bench import live as bench_live
from server.frontend import split_sentences


@pytest.fixture(scope="module")
def plan_for():
    from server.config import Settings
    from server.frontend import Frontend
    from server.voices import bundled_voice

    settings = Settings()  # the server's segment sizes, as the bench's floor uses
    frontend = Frontend(settings.max_phonemes_per_chunk, settings.first_chunk_phonemes)
    return lambda pieces: bench_live.clause_plan(pieces, frontend, bundled_voice().config)


def test_clauses_are_the_servers_sentences_each_decided_by_a_later_piece(plan_for):
    pieces = bench_live.tokens(bench_live.REPLY)
    assert "".join(pieces) == bench_live.REPLY
    plan = plan_for(pieces)
    assert [(c["start"], c["end"]) for c in plan] == split_sentences(bench_live.REPLY)
    assert "Dr. Patel" in bench_live.REPLY[plan[1]["start"]:plan[1]["end"]]
    for clause in plan[:-1]:  # decided by the piece holding the character after the space
        decided_at = sum(len(p) for p in pieces[:clause["piece"] + 1])
        assert decided_at > clause["end"] and pieces[clause["piece"]].strip()
    assert plan[-1]["piece"] is None  # the last one by the end of input


def test_playback_gaps_count_only_the_time_nothing_is_left_to_play():
    assert bench_live.playback_gaps([(0.0, 1.0), (0.5, 1.0), (2.0, 1.0)]) == 0.0
    assert bench_live.playback_gaps([(0.0, 1.0), (1.5, 1.0), (3.0, 0.5)]) == pytest.approx(1.0)


class _RecordingCall:
    """A SynthesizeLive call that notes when it hands each audio chunk over, and its audio seconds."""

    def __init__(self, call):
        self._call = call
        self.chunks: list[tuple[float, float]] = []

    async def write(self, request) -> None:
        """Send one request."""
        await self._call.write(request)

    async def done_writing(self) -> None:
        """Close the send side."""
        await self._call.done_writing()

    async def __aiter__(self):
        async for chunk in self._call:
            if chunk.num_samples:
                self.chunks.append((time.perf_counter(), chunk.num_samples / chunk.sample_rate_hz))
            yield chunk


class _RecordingStub:
    """The Synthesizer stub, each SynthesizeLive call wrapped in a _RecordingCall."""

    def __init__(self, stub):
        self._stub = stub
        self.calls: list[_RecordingCall] = []

    def SynthesizeLive(self, **kwargs) -> _RecordingCall:
        """Open the call through the real stub."""
        self.calls.append(_RecordingCall(self._stub.SynthesizeLive(**kwargs)))
        return self.calls[-1]


@pytest.mark.slow
async def test_a_live_call_times_every_clause_and_the_silence_of_its_chunk_timeline(stub, plan_for):
    pieces = bench_live.tokens(bench_live.REPLY)
    plan = plan_for(pieces)
    recording = _RecordingStub(stub)
    result = await bench_live.live_call(recording, pieces, plan)
    assert len(result["latency"]) == len(plan) and all(t is not None and t > 0 for t in result["latency"])
    handed = recording.calls[0].chunks
    # The bench's timeline is every audio chunk the call delivered, each its own length...
    assert [a for _, a in result["arrivals"]] == [a for _, a in handed]
    assert sum(a for _, a in handed) > 10  # the whole reply (about 20 s), not its first clauses
    # ... timed after the call handed it over and before the call handed over the next one.
    for k, (arrived, _) in enumerate(result["arrivals"]):
        assert handed[k][0] <= arrived and (k + 1 == len(handed) or arrived <= handed[k + 1][0])
    # Silence is max over chunks of (arrival + audio from it on) - first arrival - all audio,
    # so timing each chunk up to d later changes it by at most 2d: d is taken from the data.
    skew = max(arrived - at for (arrived, _), (at, _) in zip(result["arrivals"], handed))
    assert result["silence_s"] == pytest.approx(bench_live.playback_gaps(handed), abs=2 * skew)
