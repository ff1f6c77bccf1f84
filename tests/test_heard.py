"""clients/heard.py: the text a listener has heard, from the stream's own word timings."""

from __future__ import annotations

from clients.heard import Transcript
from speakstream.v1 import synthesizer_pb2 as pb

_TEXT = "Your order has shipped. It should arrive on Thursday."


async def test_heard_text_follows_the_played_samples(stub):
    request = pb.SynthesizeRequest(text=_TEXT, timestamps=pb.TIMESTAMPS_WORDS, noise_scale=0.0, noise_w=0.0)
    transcript = Transcript(_TEXT)
    total = 0
    async for chunk in stub.SynthesizeStream(request, timeout=60):
        transcript.add(chunk)
        total += chunk.num_samples
    words = transcript.words
    assert [w.text for w in words] == ["Your", "order", "has", "shipped", "It", "should", "arrive", "on",
                                       "Thursday"]
    assert transcript.heard(0) == "" and transcript.heard(total) == _TEXT[:-1]
    shipped, it = words[3], words[4]
    # Between "shipped" and "It" (the sentence pause) the first sentence has been heard, no more.
    pause = (shipped.end + it.start) // 2
    assert transcript.heard(pause) == "Your order has shipped" and transcript.word_at(pause) is None
    assert transcript.heard(it.start + 1) == "Your order has shipped. It"
    assert transcript.heard(it.start + 1, whole=True) == "Your order has shipped"
    assert transcript.word_at(it.start) == it
