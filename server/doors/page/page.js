// The page at / of --http-port: speaks the text box over the WebSocket live endpoint
// (/v1/audio/live, docs/API.md) and plays each binary audio frame through WebAudio as it
// arrives, scheduled back to back. Plain JavaScript, nothing fetched from elsewhere.
//
// window.speakstream.last records the last call (times in performance.now() ms, audio in
// seconds of the AudioContext clock); tests/test_door_page.py reads it.
"use strict";

const $ = (id) => document.getElementById(id);
const page = { voices: [], ws: null, ctx: null, sources: [], timers: [] };
window.speakstream = { last: null };

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadVoices() {
  const response = await fetch("/v1/audio/voices", { headers: headers() });
  if (response.status === 401) {
    $("token-row").hidden = false;
    setStatus("this server needs a bearer token: enter it, then Speak");
    return;
  }
  if (!response.ok) {
    setStatus(`voices: HTTP ${response.status}`);
    return;
  }
  const listing = await response.json();
  page.voices = listing.voices;
  $("voice").replaceChildren(...page.voices.map((v) => new Option(`${v.name} (${v.language})`, v.name,
    v.default, v.default)));
  showSpeakers();
  setStatus("ready");
}

function showSpeakers() {
  const voice = page.voices.find((v) => v.name === $("voice").value);
  const speakers = voice && voice.speakers.length ? voice.speakers : [{ id: 0, name: "—" }];
  $("speaker").replaceChildren(...speakers.map((s) => new Option(s.name, String(s.id))));
  $("speaker").disabled = speakers.length < 2;
}

function setStatus(text) {
  $("status").textContent = text;
}

function codePoints(text) {
  return Array.from(text);  // spans count code points, as the server does
}

function showHeard(record, span) {
  const chars = record.chars;
  const spoken = $("spoken");
  const done = document.createElement("span");
  done.className = "done";
  done.textContent = chars.slice(0, span[0]).join("");
  const heard = document.createElement("span");
  heard.className = "heard";
  heard.textContent = chars.slice(span[0], span[1]).join("");
  spoken.replaceChildren(done, heard, document.createTextNode(chars.slice(span[1]).join("")));
}

function later(ms, fn) {
  page.timers.push(setTimeout(fn, Math.max(0, ms)));
}

// One chunk: PCM16 into an AudioBuffer, started right after the previous one (or now,
// after an underrun), and each of its words highlighted when it is heard (the chunk's
// text span for a voice without word timings).
function play(record, meta, data) {
  const ctx = page.ctx;
  const pcm = new Int16Array(data);
  const buffer = ctx.createBuffer(1, pcm.length, record.sampleRate);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  const now = ctx.currentTime;
  if (record.nextTime < now) {
    if (record.playStartCtx !== null) record.underrunS += now - record.nextTime;
    record.nextTime = now;
  }
  const when = record.nextTime;
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  source.start(when);
  page.sources.push(source);
  record.scheduledS += buffer.duration;
  record.nextTime = when + buffer.duration;
  const inMs = (when - now) * 1000;
  if (record.playStartCtx === null) {
    record.playStartCtx = when;
    record.playStartAt = performance.now() + inMs;
  }
  source.onended = () => {
    record.endedCtx = Math.max(record.endedCtx, ctx.currentTime);
    record.pendingSources -= 1;
    if (record.pendingSources === 0 && record.serverSamples !== null) finish(record);
  };
  record.pendingSources += 1;
  const words = meta.words || [];
  if (words.length) {
    const chunkStart = meta.sample_offset / record.sampleRate;
    for (const w of words) {
      record.words.push(w.text_span);
      later(inMs + (w.start_s - chunkStart) * 1000, () => {
        record.wordsShown.push(w.text_span);
        showHeard(record, w.text_span);
      });
    }
  } else if (meta.text_span[1] > meta.text_span[0]) {
    later(inMs, () => showHeard(record, meta.text_span));
  }
}

function finish(record) {
  record.playedS = record.endedCtx - record.playStartCtx;
  record.ended = true;
  showHeard(record, [record.chars.length, record.chars.length]);
  document.body.dataset.state = "done";
  setStatus(`done: ${record.playedS.toFixed(2)} s played`);
  $("speak").disabled = false;
  $("stop").disabled = true;
}

function speak(event) {
  event.preventDefault();
  stop();
  const text = $("text").value;
  page.ctx = page.ctx || new AudioContext();
  page.ctx.resume();
  const record = {
    text, chars: codePoints(text), clickedAt: performance.now(), requestId: null, sampleRate: 0,
    firstAudioAt: null, playStartAt: null, playStartCtx: null, endedCtx: 0, nextTime: 0, underrunS: 0,
    scheduledS: 0, receivedSamples: 0, serverSamples: null, serverAudioS: null, playedS: null,
    chunks: [], pendingSources: 0, ended: false, error: null, words: [], wordsShown: [],
  };
  window.speakstream.last = record;
  document.body.dataset.state = "speaking";
  $("speak").disabled = true;
  $("stop").disabled = false;
  $("ttfa").textContent = "…";
  setStatus("connecting");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/audio/live`);
  ws.binaryType = "arraybuffer";
  page.ws = ws;
  let meta = null;
  ws.onopen = () => {
    const start = { type: "start", voice: $("voice").value, speaker: Number($("speaker").value),
      speed: Number($("speed").value), format: "pcm", timestamps: "words" };
    const token = $("token").value.trim();
    if (token) start.token = token;
    ws.send(JSON.stringify(start));
    ws.send(JSON.stringify({ type: "text", text }));
    ws.send(JSON.stringify({ type: "close" }));
    setStatus("speaking");
  };
  ws.onmessage = (message) => {
    if (typeof message.data !== "string") {
      const arrivedAt = performance.now();
      if (record.firstAudioAt === null) {
        record.firstAudioAt = arrivedAt;
        $("ttfa").textContent = `${Math.round(arrivedAt - record.clickedAt)} ms`;
      }
      record.chunks.push({ arrivedAt, sentence: meta.sentence_index, samples: meta.num_samples });
      record.receivedSamples += meta.num_samples;
      $("received").textContent = `${(record.receivedSamples / record.sampleRate).toFixed(2)} s`;
      play(record, meta, message.data);
      return;
    }
    const frame = JSON.parse(message.data);
    if (frame.type === "ready") {
      record.requestId = frame.request_id;
      record.sampleRate = frame.sample_rate;
      $("request-id").textContent = frame.request_id;
    } else if (frame.type === "audio") {
      meta = frame;
    } else if (frame.type === "done") {
      record.serverSamples = frame.num_samples;
      record.serverAudioS = frame.audio_s;
      if (record.pendingSources === 0) finish(record);
    } else if (frame.type === "error") {
      record.error = frame.message;
      if (frame.status === 401) $("token-row").hidden = false;
      setStatus(`error ${frame.status}: ${frame.message}`);
      document.body.dataset.state = "error";
      $("speak").disabled = false;
    }
  };
  ws.onclose = (close) => {
    if (record.serverSamples === null && !record.error) {
      setStatus(`closed (${close.code})`);
      $("speak").disabled = false;
      $("stop").disabled = true;
    }
  };
}

function stop() {
  if (page.ws) page.ws.close();  // hanging up stops the server's inferences too
  page.ws = null;
  for (const source of page.sources) source.stop();
  page.sources = [];
  for (const timer of page.timers) clearTimeout(timer);
  page.timers = [];
  $("stop").disabled = true;
  $("speak").disabled = false;
}

$("form").addEventListener("submit", speak);
$("stop").addEventListener("click", stop);
$("voice").addEventListener("change", showSpeakers);
$("speed").addEventListener("input", () => { $("speed-value").textContent = Number($("speed").value).toFixed(2); });
$("token").addEventListener("change", loadVoices);
document.body.dataset.state = "idle";
loadVoices().catch((error) => setStatus(`voices: ${error}`));
