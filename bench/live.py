"""live section of `make bench`: SynthesizeLive, from a clause's last character to its first audio.

Each live call streams an assistant's reply at an LLM's pace (TOKENS_PER_S
tokens a second, tokens as a tokenizer cuts them: words with their leading
space, punctuation apart). A clause is a sentence span as the server cuts
it; it is certain once the character after its whitespace has arrived, so
its clock starts when the client sends the piece holding that character
(for the reply's last clause: when the client closes the send side). It
stops when the first audio chunk whose text span starts at the clause
arrives. The same spans are computed here with the server's own
LiveSegmenter, and each clause's first segment (same cut, same phoneme ids)
is run on bare ONNX Runtime for the floor, as the server section does.

Calls set max_pending_ms to its maximum so every clause is ended by its
punctuation, not by the timer (which would only make audio earlier).
Default noise scales, so the audio cache is not involved.

Figures are given for the reply's first clause (what the listener waits
for), for later clauses, and as the silence a listener would hear: audio
played from its first chunk on, without prebuffer, each later chunk late or
not for the moment the audio before it runs out. A later clause that is not
due yet (audio before it still playing) waits behind due work of other calls
by design (earliest due first), so under load its "last character to first
audio" grows without any gap in playback.

A run-on reply (no punctuation, default max_pending_ms) is timed too: from
sending its first word to its first audio, which the server's timer forces
max_pending_ms after the first word; the floor is the words of that first
chunk, phonemized and cut as the server cuts a turn's first segment.

The machine is shared: rounds interleave floor, idle, run-on and
concurrency 8, and the figures are medians over rounds.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import sys
import time
from typing import Any, Optional

import numpy as np

from bench.floor import Floor
from bench.server_process import ServerProcess
from clients.channel import Connection, open_aio_channel
from server.live import DEFAULT_MAX_PENDING_MS, LiveSegmenter, Span
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

REPLY = (
    "Sure, I can help with that. Your appointment with Dr. Patel is on Thursday at half past three. "
    "Please bring your insurance card and a list of the medicines you take. "
    "If you need to reschedule, call the front desk at least a day ahead. "
    "Parking is free in the garage on Elm Street. "
    "Is there anything else I can do for you today?"
)
TOKENS_PER_S = 40.0
RUN_ON_WORDS = ("so the plan is to keep going with more words and then a few more after that "
                "without ever stopping at a full stop").split()
MAX_PENDING_MS = 10_000
_TIMEOUT_S = 120


def tokens(text: str) -> list[str]:
    """`text` cut as an LLM's tokenizer roughly cuts it: words with their leading space, punctuation apart."""
    pieces = re.findall(r"\s*[\w']+|\s*[^\w\s]|\s+", text)
    assert "".join(pieces) == text
    return pieces


def clause_plan(pieces: list[str], frontend, voice_config) -> list[dict]:
    """The clauses the server will speak: span, the piece that makes each certain
    (None: the end of input), and the ids of its first segment."""
    seg = LiveSegmenter(MAX_PENDING_MS, 0)
    spans: list[tuple[Span, Optional[int]]] = []
    for k, piece in enumerate(pieces):
        spans += [(span, k) for span in seg.feed(piece, now=0.0)]
    last = seg.flush()
    if last:
        spans.append((last, None))
    plan = []
    for index, (span, deciding) in enumerate(spans):
        first = frontend.span_segments(seg.text, span, index, index == 0, voice_config)[0]
        plan.append({"start": span[0], "end": span[1], "piece": deciding, "ids": first.ids,
                     "phonemes": len(first.phonemes)})
    return plan


async def live_call(stub, pieces: list[str], plan: list[dict], delay_s: float = 0.0) -> dict:
    """Stream `pieces` at TOKENS_PER_S: seconds from each clause's deciding piece to
    its first audio ("latency", None if never), the audio chunks' (arrival, audio
    seconds) ("arrivals") and the playback gaps they make ("silence_s")."""
    await asyncio.sleep(delay_s)
    config = pb.LiveConfig(settings=pb.SynthesizeRequest(), max_pending_ms=MAX_PENDING_MS)
    call = stub.SynthesizeLive(timeout=_TIMEOUT_S)
    await call.write(pb.LiveRequest(config=config))
    sent: dict = {}
    first_audio: dict[int, float] = {}
    starts = {c["start"]: i for i, c in enumerate(plan)}
    arrivals = []

    async def receive():
        async for chunk in call:
            now = time.perf_counter()
            if chunk.num_samples:
                arrivals.append((now, chunk.num_samples / chunk.sample_rate_hz))
            index = starts.get(chunk.text_span.start)
            if chunk.num_samples and index is not None and index not in first_audio:
                first_audio[index] = now

    receiver = asyncio.ensure_future(receive())
    start = time.perf_counter()
    for k, piece in enumerate(pieces):
        await asyncio.sleep(max(0.0, start + k / TOKENS_PER_S - time.perf_counter()))
        sent[k] = time.perf_counter()
        await call.write(pb.LiveRequest(text=piece))
    sent[None] = time.perf_counter()
    await call.done_writing()
    await receiver
    return {"latency": [first_audio[i] - sent[c["piece"]] if i in first_audio else None
                        for i, c in enumerate(plan)],
            "arrivals": arrivals, "silence_s": playback_gaps(arrivals)}


def playback_gaps(arrivals: list[tuple[float, float]]) -> float:
    """Seconds of silence in playback started at the first chunk: (arrival, audio seconds) in order."""
    gaps, play_end = 0.0, None
    for arrival, seconds in arrivals:
        if play_end is None:
            play_end = arrival
        elif arrival > play_end:
            gaps += arrival - play_end
            play_end = arrival
        play_end += seconds
    return gaps


async def run_on_call(stub, floor) -> dict:
    """A reply without punctuation at TOKENS_PER_S with the default max_pending_ms:
    seconds from the first word to the first audio, and the floor for the first chunk's words."""
    call = stub.SynthesizeLive(timeout=_TIMEOUT_S)
    await call.write(pb.LiveRequest(config=pb.LiveConfig(settings=pb.SynthesizeRequest())))
    first_chunk = asyncio.ensure_future(call.read())
    text, start = "", time.perf_counter()
    for k in range(400):
        if first_chunk.done():
            break
        await asyncio.sleep(max(0.0, start + k / TOKENS_PER_S - time.perf_counter()))
        piece = (" " if k else "") + RUN_ON_WORDS[k % len(RUN_ON_WORDS)]
        if k == 0:
            start = time.perf_counter()
        text += piece
        await call.write(pb.LiveRequest(text=piece))
    chunk = await first_chunk
    waited = time.perf_counter() - start
    call.cancel()
    span = (chunk.text_span.start, chunk.text_span.end)
    segment = floor.frontend.span_segments(text, span, 0, True, floor.voice.config)[0]
    return {"first_audio_s": waited, "max_pending_s": DEFAULT_MAX_PENDING_MS / 1000,
            "floor_s": floor.sequential(segment.ids, 5), "span_chars": span[1] - span[0]}


def _floors(floor, plan: list[dict]) -> list[float]:
    return [floor.sequential(c["ids"], 5) for c in plan]


_KEYS = ("p50_s", "p95_s", "ratio_p50", "ratio_p95")


def _figures(values: list[tuple[float, float]]) -> dict:
    """p50/p95 of latencies and of latency / floor, from (latency, floor) pairs."""
    lat = [v for v, _ in values]
    ratio = [v / f for v, f in values]
    return {"p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "ratio_p50": float(np.percentile(ratio, 50)), "ratio_p95": float(np.percentile(ratio, 95)),
            "n": len(values)}


def _round_figures(calls: list[dict], floors: list[float]) -> dict:
    pairs = [(i, lat, floors[i]) for call in calls for i, lat in enumerate(call["latency"]) if lat is not None]
    silence = [call["silence_s"] for call in calls]
    return {"all": _figures([(lat, f) for _, lat, f in pairs]),
            "first": _figures([(lat, f) for i, lat, f in pairs if i == 0]),
            "later": _figures([(lat, f) for i, lat, f in pairs if i > 0]),
            "silence_p50_s": float(np.percentile(silence, 50)),
            "silence_max_s": float(np.max(silence)),
            "missing": sum(1 for call in calls for lat in call["latency"] if lat is None)}


async def _measure(connection: Connection, floor, plan, pieces, rounds: int, idle_calls: int,
                   concurrency: int) -> dict:
    out: dict[str, list[dict]] = {"rounds": []}
    rng = random.Random(9)
    async with open_aio_channel(connection) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        await live_call(stub, pieces, plan)  # warm up
        for n in range(rounds):
            floors = _floors(floor, plan)
            idle = [await live_call(stub, pieces, plan) for _ in range(idle_calls)]
            run_on = [await run_on_call(stub, floor) for _ in range(idle_calls)]
            # Calls start spread over one second, as users' turns do.
            loaded = await asyncio.gather(*(live_call(stub, pieces, plan, rng.random())
                                            for _ in range(concurrency)))
            result: dict[str, Any] = {"floor_s": floors, "idle": _round_figures(idle, floors), "run_on": run_on,
                                      f"concurrency_{concurrency}": _round_figures(loaded, floors)}
            out["rounds"].append(result)
            print(f"  live round {n + 1}: idle p50 {result['idle']['all']['p50_s'] * 1000:.0f} ms "
                  f"(x{result['idle']['all']['ratio_p50']:.2f} floor), c{concurrency} first clause p50 "
                  f"{result[f'concurrency_{concurrency}']['first']['p50_s'] * 1000:.0f} ms", file=sys.stderr)
    return out


def summarize(measured: dict, concurrency: int) -> dict:
    """Medians over rounds of each round's figures."""
    rounds = measured["rounds"]
    out: dict[str, Any] = {"floor_p50_s": statistics.median(float(np.median(r["floor_s"])) for r in rounds)}
    for arm in ("idle", f"concurrency_{concurrency}"):
        out[arm] = {part: {key: statistics.median(r[arm][part][key] for r in rounds) for key in _KEYS}
                    for part in ("all", "first", "later")}
        for key in ("silence_p50_s", "silence_max_s"):
            out[arm][key] = statistics.median(r[arm][key] for r in rounds)
        out[arm]["missing"] = sum(r[arm]["missing"] for r in rounds)
    run_ons = [x for r in rounds for x in r["run_on"]]
    waits = [x["first_audio_s"] for x in run_ons]
    over = [(x["first_audio_s"] - x["max_pending_s"]) / x["floor_s"] for x in run_ons]
    out["run_on"] = {"first_audio_p50_s": float(np.percentile(waits, 50)),
                     "first_audio_p95_s": float(np.percentile(waits, 95)),
                     "floor_p50_s": float(np.median([x["floor_s"] for x in run_ons])),
                     "beyond_timer_vs_floor_p50": float(np.percentile(over, 50)),
                     "beyond_timer_vs_floor_p95": float(np.percentile(over, 95)),
                     "max_pending_s": run_ons[0]["max_pending_s"], "n": len(run_ons)}
    return out


def run(target: Optional[str] = None, server_args: tuple = (), rounds: int = 3, idle_calls: int = 3,
        concurrency: int = 8, connection: Optional[Connection] = None) -> dict:
    """The live section against `target` (reached through `connection`, default plaintext)
    or a server started here; a dict of figures."""
    floor = Floor()
    pieces = tokens(REPLY)
    plan = clause_plan(pieces, floor.frontend, floor.voice.config)
    if target:
        measured = asyncio.run(_measure(connection or Connection(target), floor, plan, pieces, rounds,
                                        idle_calls, concurrency))
    else:
        with ServerProcess(list(server_args)) as server:
            measured = asyncio.run(_measure(Connection(server.address), floor, plan, pieces, rounds,
                                            idle_calls, concurrency))
    return {
        "reply_chars": len(REPLY), "tokens": len(pieces), "tokens_per_s": TOKENS_PER_S,
        "clauses": [{k: c[k] for k in ("start", "end", "phonemes")} for c in plan],
        "summary": summarize(measured, concurrency), **measured,
    }


def print_table(result: dict, concurrency: int = 8) -> None:
    """A human summary of the live figures."""
    s = result["summary"]
    print(f"\nlive: {len(result['clauses'])} clauses, {result['tokens']} tokens at "
          f"{result['tokens_per_s']:.0f}/s; clause end -> first audio (medians of {len(result['rounds'])} rounds)")
    print(f"{'':14} {'clauses':8} {'p50':>8} {'p95':>8} {'x floor p50':>12} {'x floor p95':>12} "
          f"{'silence p50':>12} {'max':>6}")
    for arm in ("idle", f"concurrency_{concurrency}"):
        a = s[arm]
        for part in ("all", "first", "later"):
            f = a[part]
            gaps = (f"{a['silence_p50_s'] * 1000:10.0f}ms {a['silence_max_s'] * 1000:4.0f}ms"
                    if part == "all" else "")
            print(f"{arm if part == 'all' else '':14} {part:8} {f['p50_s'] * 1000:6.0f}ms {f['p95_s'] * 1000:6.0f}ms "
                  f"{f['ratio_p50']:12.2f} {f['ratio_p95']:12.2f} {gaps}")
    print(f"floor for the clauses' first segments, p50: {s['floor_p50_s'] * 1000:.0f} ms")
    r = s["run_on"]
    print(f"run-on, first word -> first audio: p50 {r['first_audio_p50_s'] * 1000:.0f} ms, "
          f"p95 {r['first_audio_p95_s'] * 1000:.0f} ms (max_pending_ms {r['max_pending_s'] * 1000:.0f}, "
          f"floor {r['floor_p50_s'] * 1000:.0f} ms; beyond the timer / floor: p50 "
          f"{r['beyond_timer_vs_floor_p50']:.2f}, p95 {r['beyond_timer_vs_floor_p95']:.2f})")


if __name__ == "__main__":
    figures = run()
    print_table(figures)
