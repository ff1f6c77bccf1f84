#!/usr/bin/env node
// speakstream-say-node: stream a text through a speakstream server and write the
// audio to a WAV file. The Node.js twin of clients/say.py, built only from the
// .proto files in protos/ (no generated code), with @grpc/grpc-js.
//
//   node say.js --server 127.0.0.1:50051 --noise-scale 0 --noise-w 0 -o out.wav "Hello there."
//   node say.js --words -o out.wav "Hello there."   # and each word's start and end, as they arrive
//
// Exit codes (the same as speakstream-say): 0 done, 2 bad request or usage
// (INVALID_ARGUMENT, NOT_FOUND), 3 server unreachable or failed, 130 interrupted.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS_DIR = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = 'speakstream/v1/synthesizer.proto';
const DEFAULT_SERVER = process.env.SPEAKSTREAM_ADDRESS || '127.0.0.1:50051';
const EXIT_USAGE = 2;
const EXIT_SERVER = 3;
const EXIT_INTERRUPTED = 130;
const WAV_HEADER_BYTES = 44;
const BYTES_PER_SAMPLE = 2; // LINEAR16

const USAGE = `usage: say.js [--server HOST:PORT] [--voice NAME] [--speaker N] [--speed X]
              [--noise-scale X] [--noise-w X] [--timeout SECONDS] [--words] -o OUT.wav [TEXT]
       say.js [--server HOST:PORT] --list-voices

Speaks TEXT (default: standard input) with a speakstream server and writes a
16-bit mono WAV file. --server defaults to $SPEAKSTREAM_ADDRESS or 127.0.0.1:50051.
--words asks for word timestamps and prints each word as its chunk arrives:
its start and end in seconds of the audio, a tab, the word (one a line).`;

/** A usage error: exit code 2 with a message. */
class UsageError extends Error {}

/** The Synthesizer service constructor, loaded from protos/ at run time. */
function loadSynthesizer() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTOS_DIR],
    keepCase: false, // camelCase field names: sampleRateHz, noiseScale, ...
    longs: Number, // uint64 offsets fit a double for any audio shorter than 400 years
    enums: String, // 'AUDIO_ENCODING_LINEAR16'
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).speakstream.v1.Synthesizer;
}

/** Parsed command line: {server, request, output, timeoutS, listVoices, words}. */
function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        server: { type: 'string', default: DEFAULT_SERVER },
        voice: { type: 'string', default: '' },
        speaker: { type: 'string' },
        speed: { type: 'string' },
        'noise-scale': { type: 'string' },
        'noise-w': { type: 'string' },
        timeout: { type: 'string', default: '300' },
        output: { type: 'string', short: 'o' },
        words: { type: 'boolean', default: false },
        'list-voices': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    throw new UsageError(err.message);
  }
  const { values, positionals } = parsed;
  if (values.help) return { help: true };
  if (positionals.length > 1) throw new UsageError('give the text as one argument (quote it) or on standard input');
  if (!values['list-voices'] && !values.output) throw new UsageError('-o/--output OUT.wav is required');
  const request = { text: positionals[0], voice: values.voice, encoding: 'AUDIO_ENCODING_LINEAR16' };
  if (values.words) request.timestamps = 'TIMESTAMPS_WORDS';
  // Optional fields are sent only when given, so the server's defaults apply otherwise.
  for (const [flag, field, parse] of [
    ['speaker', 'speakerId', parseInteger],
    ['speed', 'speed', parseNumber],
    ['noise-scale', 'noiseScale', parseNumber],
    ['noise-w', 'noiseW', parseNumber],
  ]) {
    if (values[flag] !== undefined) request[field] = parse(flag, values[flag]);
  }
  return {
    server: values.server,
    request,
    output: values.output,
    timeoutS: parseNumber('timeout', values.timeout),
    listVoices: values['list-voices'],
    words: values.words,
  };
}

function parseNumber(flag, text) {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value)) throw new UsageError(`--${flag}: not a number: ${text}`);
  return value;
}

function parseInteger(flag, text) {
  const value = parseNumber(flag, text);
  if (!Number.isInteger(value)) throw new UsageError(`--${flag}: not an integer: ${text}`);
  return value;
}

/** A RIFF/WAVE header for `dataBytes` bytes of 16-bit mono PCM at `sampleRate` Hz. */
function wavHeader(sampleRate, dataBytes) {
  const header = Buffer.alloc(WAV_HEADER_BYTES);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + dataBytes, 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(sampleRate, 24);
  header.writeUInt32LE(sampleRate * BYTES_PER_SAMPLE, 28); // byte rate
  header.writeUInt16LE(BYTES_PER_SAMPLE, 32); // block align
  header.writeUInt16LE(8 * BYTES_PER_SAMPLE, 34); // bits per sample
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(dataBytes, 40);
  return header;
}

/**
 * The words of `chunk` (AudioChunk.words, with timestamps asked for) as
 * {word, start, end, startSample, endSample, textStart, textEnd}: seconds at the
 * chunk's rate, and the word's text from `codePoints` (the request text split
 * into code points, which spans count: a JavaScript string counts UTF-16 units).
 */
function chunkWords(chunk, codePoints) {
  return chunk.words.map((w) => ({
    word: codePoints.slice(w.textSpan.start, w.textSpan.end).join(''),
    start: w.startSample / chunk.sampleRateHz,
    end: w.endSample / chunk.sampleRateHz,
    startSample: w.startSample,
    endSample: w.endSample,
    textStart: w.textSpan.start,
    textEnd: w.textSpan.end,
  }));
}

/** One line of --words: start and end in seconds, a tab, the word. */
function formatWord({ word, start, end }) {
  return `${start.toFixed(3)}\t${end.toFixed(3)}\t${word}`;
}

/**
 * Stream `request` from the server at `server` into the WAV file `output`.
 * The file is created with the first chunk and its header completed at the end;
 * a failed call removes it. `onWord`, if given, gets each word (chunkWords) as
 * its chunk arrives (ask for them with request.timestamps). Resolves to
 * {samples, sampleRate, chunks}.
 */
function synthesizeToWav({ server, request, output, timeoutS, onWord }, Synthesizer = loadSynthesizer()) {
  const client = new Synthesizer(server, grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + timeoutS * 1000);
  return new Promise((resolve, reject) => {
    let fd = null;
    let settled = false;
    let ended = false;
    let ok = false;
    let sampleRate = 0;
    let samples = 0;
    let chunks = 0;
    const codePoints = onWord ? Array.from(request.text) : [];
    const call = client.SynthesizeStream(request, { deadline });
    const fail = (err) => {
      if (settled) return;
      settled = true;
      if (fd !== null) {
        fs.closeSync(fd);
        fs.rmSync(output, { force: true });
      }
      client.close();
      reject(err);
    };
    // Done when every chunk has been read ('end') and the status is OK ('status').
    const finish = () => {
      if (settled || !ended || !ok) return;
      if (fd === null) {
        fail(new Error('the server sent no audio'));
        return;
      }
      settled = true;
      fs.writeSync(fd, wavHeader(sampleRate, samples * BYTES_PER_SAMPLE), 0, WAV_HEADER_BYTES, 0);
      fs.closeSync(fd);
      client.close();
      resolve({ samples, sampleRate, chunks });
    };
    call.on('data', (chunk) => {
      if (settled) return;
      try {
        checkChunk(chunk, chunks, sampleRate);
        if (fd === null) {
          sampleRate = chunk.sampleRateHz;
          fd = fs.openSync(output, 'w');
          fs.writeSync(fd, wavHeader(sampleRate, 0)); // sizes are patched at the end
        }
        fs.writeSync(fd, chunk.audio);
        samples += chunk.numSamples;
        chunks += 1;
        if (onWord) chunkWords(chunk, codePoints).forEach(onWord);
      } catch (err) {
        fail(err);
        call.cancel();
      }
    });
    call.on('error', fail);
    call.on('end', () => {
      ended = true;
      finish();
    });
    call.on('status', (status) => {
      ok = status.code === grpc.status.OK;
      finish();
    });
  });
}

/** Throws when `chunk` is not the next LINEAR16 chunk of the stream at `sampleRate` (0: any). */
function checkChunk(chunk, expectedSequence, sampleRate) {
  if (chunk.encoding !== 'AUDIO_ENCODING_LINEAR16') throw new Error(`unexpected encoding ${chunk.encoding}`);
  if (chunk.sequence !== expectedSequence) throw new Error(`chunk ${chunk.sequence} arrived, expected ${expectedSequence}`);
  if (sampleRate && chunk.sampleRateHz !== sampleRate) {
    throw new Error(`sample rate changed mid-stream: ${sampleRate} -> ${chunk.sampleRateHz}`);
  }
  if (chunk.audio.length !== chunk.numSamples * BYTES_PER_SAMPLE) {
    throw new Error(`chunk ${chunk.sequence}: ${chunk.audio.length} bytes for ${chunk.numSamples} samples`);
  }
}

/** The server's voices (ListVoicesResponse.voices). */
function listVoices({ server, timeoutS }, Synthesizer = loadSynthesizer()) {
  const client = new Synthesizer(server, grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + timeoutS * 1000);
  return new Promise((resolve, reject) => {
    client.ListVoices({}, { deadline }, (err, response) => {
      client.close();
      if (err) reject(err);
      else resolve(response.voices);
    });
  });
}

/** Exit code and message for a failed call, as speakstream-say reports them. */
function describeError(err, server) {
  if (err instanceof UsageError) return [EXIT_USAGE, `say.js: ${err.message}\n${USAGE}`];
  if (err.code === undefined) return [EXIT_SERVER, `say.js: ${err.message}`];
  const codeName = Object.keys(grpc.status).find((name) => grpc.status[name] === err.code) || String(err.code);
  if (err.code === grpc.status.UNAVAILABLE) {
    return [EXIT_SERVER, `say.js: cannot reach the server at ${server}: ${err.details}`];
  }
  const usage = err.code === grpc.status.INVALID_ARGUMENT || err.code === grpc.status.NOT_FOUND;
  return [usage ? EXIT_USAGE : EXIT_SERVER, `say.js: ${codeName}: ${err.details}`];
}

async function main(argv) {
  let options = { server: DEFAULT_SERVER };
  try {
    options = parseCommandLine(argv);
    if (options.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    if (options.listVoices) {
      for (const voice of await listVoices(options)) {
        process.stdout.write(`${voice.name}\t${voice.language}\t${voice.sampleRateHz} Hz\t${voice.quality}` +
          `${voice.isDefault ? '\t(default)' : ''}\n`);
      }
      return 0;
    }
    if (options.request.text === undefined) options.request.text = fs.readFileSync(0, 'utf8');
    if (options.words) options.onWord = (word) => process.stdout.write(`${formatWord(word)}\n`);
    const { samples, sampleRate } = await synthesizeToWav(options);
    process.stderr.write(`wrote ${options.output}: ${samples} samples at ${sampleRate} Hz\n`);
    return 0;
  } catch (err) {
    const [code, message] = describeError(err, options.server);
    process.stderr.write(`${message}\n`);
    return code;
  }
}

module.exports = {
  loadSynthesizer, parseCommandLine, synthesizeToWav, chunkWords, formatWord, listVoices, wavHeader, describeError,
  UsageError,
};

if (require.main === module) {
  process.on('SIGINT', () => process.exit(EXIT_INTERRUPTED));
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
