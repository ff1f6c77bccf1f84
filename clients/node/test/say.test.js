// npm test: the Node client against a live speakstream server at
// $SPEAKSTREAM_ADDRESS (default 127.0.0.1:50051). pytest runs this against its
// own server (tests/test_node_client.py); by hand, start one with `make serve`.
'use strict';

const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, describe, test } = require('node:test');
const { chunkWords, formatWord, listVoices, parseCommandLine, wavHeader, UsageError } = require('../say.js');

const SERVER = process.env.SPEAKSTREAM_ADDRESS || '127.0.0.1:50051';
const SAY = path.resolve(__dirname, '..', 'say.js');
const TIMEOUT_MS = 60_000;

/** Runs say.js with `args`; resolves to {code, stdout, stderr}. */
function say(args, input) {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [SAY, ...args], { timeout: TIMEOUT_MS }, (err, stdout, stderr) => {
      resolve({ code: err ? err.code : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

/** The fields of a 44-byte-header PCM WAV file. */
function readWav(file) {
  const data = fs.readFileSync(file);
  return {
    riff: data.toString('ascii', 0, 4),
    riffSize: data.readUInt32LE(4),
    wave: data.toString('ascii', 8, 12),
    format: data.readUInt16LE(20),
    channels: data.readUInt16LE(22),
    sampleRate: data.readUInt32LE(24),
    bitsPerSample: data.readUInt16LE(34),
    dataTag: data.toString('ascii', 36, 40),
    dataBytes: data.readUInt32LE(40),
    fileBytes: data.length,
  };
}

const TEMP_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'speakstream-node-'));
after(() => fs.rmSync(TEMP_DIR, { recursive: true, force: true }));

function tempFile(name) {
  return path.join(TEMP_DIR, name);
}

describe('command line', () => {
  test('optional knobs are sent only when given', () => {
    const { request } = parseCommandLine(['-o', 'x.wav', 'hi']);
    assert.deepEqual(request, { text: 'hi', voice: '', encoding: 'AUDIO_ENCODING_LINEAR16' });
  });

  test('deterministic flags become zero noise scales, not missing ones', () => {
    const { request } = parseCommandLine(['--noise-scale', '0', '--noise-w', '0', '--speaker', '0', '-o', 'x.wav', 'hi']);
    assert.equal(request.noiseScale, 0);
    assert.equal(request.noiseW, 0);
    assert.equal(request.speakerId, 0);
  });

  test('bad numbers and a missing output are usage errors', () => {
    assert.throws(() => parseCommandLine(['--speed', 'fast', '-o', 'x.wav', 'hi']), UsageError);
    assert.throws(() => parseCommandLine(['--speaker', '1.5', '-o', 'x.wav', 'hi']), UsageError);
    assert.throws(() => parseCommandLine(['hi']), /--output/);
    assert.throws(() => parseCommandLine(['--bogus', '-o', 'x.wav']), UsageError);
  });

  test('--words asks for word timestamps', () => {
    assert.equal(parseCommandLine(['--words', '-o', 'x.wav', 'hi']).request.timestamps, 'TIMESTAMPS_WORDS');
    assert.equal(parseCommandLine(['-o', 'x.wav', 'hi']).request.timestamps, undefined);
  });

  test('a word is cut from the text by code points, its samples read at the chunk\'s rate', () => {
    const timing = { textSpan: { start: 2, end: 7 }, startSample: 16000, endSample: 24000 };
    const chunk = { sampleRateHz: 16000, words: [timing] };
    const [word] = chunkWords(chunk, Array.from('🙂 Hello'));  // the emoji is two UTF-16 units, one code point
    assert.deepEqual(word, { word: 'Hello', start: 1, end: 1.5, startSample: 16000, endSample: 24000, textStart: 2,
      textEnd: 7 });
    assert.equal(formatWord(word), '1.000\t1.500\tHello');
  });

  test('the WAV header describes 16-bit mono PCM', () => {
    const header = wavHeader(22050, 1000);
    assert.equal(header.length, 44);
    assert.equal(header.toString('ascii', 0, 4), 'RIFF');
    assert.equal(header.readUInt32LE(4), 1036);
    assert.equal(header.readUInt32LE(28), 44100);
    assert.equal(header.readUInt32LE(40), 1000);
  });
});

describe(`against the server at ${SERVER}`, () => {
  before(async () => {
    try {
      await listVoices({ server: SERVER, timeoutS: 10 });
    } catch (err) {
      throw new Error(`no speakstream server answers at ${SERVER} (${err.message}); ` +
        'start one with `make serve` or set SPEAKSTREAM_ADDRESS');
    }
  });

  test('lists the default voice', async () => {
    const voices = await listVoices({ server: SERVER, timeoutS: 10 });
    const defaults = voices.filter((v) => v.isDefault);
    assert.equal(defaults.length, 1);
    assert.equal(defaults[0].sampleRateHz, 22050);
  });

  test('streams a text into a complete 16-bit mono WAV', async () => {
    const out = tempFile('hello.wav');
    const { code, stderr } = await say(['--server', SERVER, '--noise-scale', '0', '--noise-w', '0', '-o', out,
      'Hello there. How are you?']);
    assert.equal(code, 0, stderr);
    const wav = readWav(out);
    assert.deepEqual([wav.riff, wav.wave, wav.dataTag], ['RIFF', 'WAVE', 'data']);
    assert.deepEqual([wav.format, wav.channels, wav.sampleRate, wav.bitsPerSample], [1, 1, 22050, 16]);
    assert.equal(wav.dataBytes, wav.fileBytes - 44);
    assert.equal(wav.riffSize, wav.fileBytes - 8);
    const seconds = wav.dataBytes / 2 / 22050;
    assert.ok(seconds > 1.0 && seconds < 3.5, `${seconds} s of audio`);
    assert.match(stderr, new RegExp(`${wav.dataBytes / 2} samples`));
  });

  test('--words prints each word with its start and end seconds', async () => {
    const out = tempFile('words.wav');
    const text = '🙂 Hello there. How are you?';
    const { code, stdout, stderr } = await say(['--server', SERVER, '--noise-scale', '0', '--noise-w', '0', '--words',
      '-o', out, text]);
    assert.equal(code, 0, stderr);
    const words = stdout.trimEnd().split('\n').map((line) => {
      const [start, end, word] = line.split('\t');
      return { start: Number(start), end: Number(end), word };
    });
    // Cut by code points: after the emoji, a JavaScript string's offsets would be one off.
    assert.deepEqual(words.slice(-5).map((w) => w.word), ['Hello', 'there', 'How', 'are', 'you']);
    const seconds = readWav(out).dataBytes / 2 / 22050;
    for (const [i, w] of words.entries()) {
      assert.ok(w.start < w.end && w.end <= seconds, `${w.word}: ${w.start}-${w.end} of ${seconds} s`);
      if (i > 0) assert.ok(words[i - 1].end <= w.start, `${w.word} starts before ${words[i - 1].word} ends`);
    }
  });

  test('reads the text from standard input', async () => {
    const out = tempFile('stdin.wav');
    const { code, stderr } = await say(['--server', SERVER, '-o', out], 'Read from a pipe.');
    assert.equal(code, 0, stderr);
    assert.ok(readWav(out).dataBytes > 22050, 'at least half a second of audio');
  });

  test('an unknown voice exits 2 with NOT_FOUND and leaves no file', async () => {
    const out = tempFile('none.wav');
    const { code, stderr } = await say(['--server', SERVER, '--voice', 'nobody', '-o', out, 'hi']);
    assert.equal(code, 2);
    assert.match(stderr, /NOT_FOUND: voice/);
    assert.equal(fs.existsSync(out), false);
  });

  test('a knob out of range exits 2 with INVALID_ARGUMENT naming the field', async () => {
    const { code, stderr } = await say(['--server', SERVER, '--speed', '9', '-o', tempFile('x.wav'), 'hi']);
    assert.equal(code, 2);
    assert.match(stderr, /INVALID_ARGUMENT: speed/);
  });
});

test('an unreachable server exits 3', async () => {
  const { code, stderr } = await say(['--server', '127.0.0.1:1', '--timeout', '5', '-o', tempFile('x.wav'), 'hi']);
  assert.equal(code, 3);
  assert.match(stderr, /cannot reach the server at 127\.0\.0\.1:1/);
});
