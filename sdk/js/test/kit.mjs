// Test kit: the real BotCall server and the Python CLI bot as child processes,
// tones, WAV files and a frequency estimate. Nothing here is mocked.

import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect, createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { requestJson } from '../src/index.js';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The Python that runs BotCall: $BOTCALL_PYTHON, else the repository's .venv (what `make test` sets up). */
export const PYTHON = process.env.BOTCALL_PYTHON ?? (existsSync(join(REPO, '.venv/bin/python')) ? join(REPO, '.venv/bin/python') : 'python3');
const ENV = { ...process.env, PYTHONPATH: REPO, PYTHONUNBUFFERED: '1' };

async function freeTcpPort() {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

async function freeUdpPort() {
  const socket = createSocket('udp4');
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  const { port } = socket.address();
  socket.close();
  return port;
}

/** A line-reading child process whose stdout lines can be awaited. */
class Child {
  constructor(process, name) {
    this.process = process;
    this.name = name;
    this.lines = [];
    this.stderr = '';
    this._waiters = [];
    let buffer = '';
    process.stdout.on('data', (data) => {
      buffer += data.toString();
      let index;
      while ((index = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, index);
        buffer = buffer.slice(index + 1);
        this.lines.push(line);
        for (const waiter of [...this._waiters]) waiter();
      }
    });
    process.stderr.on('data', (data) => {
      this.stderr = (this.stderr + data.toString()).slice(-20000);
    });
    this.exited = once(process, 'exit').then(([code]) => {
      for (const waiter of [...this._waiters]) waiter();
      return code;
    });
  }

  /** The JSON objects printed so far (non-JSON lines skipped). */
  json() {
    return this.lines.flatMap((line) => {
      try {
        return [JSON.parse(line)];
      } catch {
        return [];
      }
    });
  }

  /** Wait for a printed JSON object matching `predicate` (fails if the process exits first). */
  waitJson(predicate, timeoutMs = 30_000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`${this.name}: timed out; stderr:\n${this.stderr}`)), timeoutMs);
      const check = () => {
        const found = this.json().find(predicate);
        if (found) return done(null, found);
        if (this.process.exitCode !== null) return done(new Error(`${this.name} exited ${this.process.exitCode}; stderr:\n${this.stderr}`));
      };
      const done = (err, value) => {
        clearTimeout(timer);
        this._waiters = this._waiters.filter((w) => w !== check);
        if (err) reject(err);
        else resolve(value);
      };
      this._waiters.push(check);
      check();
    });
  }

  async stop() {
    if (this.process.exitCode === null && this.process.signalCode === null) {
      this.process.kill('SIGTERM');
      await this.exited;
    }
  }
}

/**
 * Start `botcall serve` on free loopback ports with its own data directory (and dev issuer).
 * `publicUrl`: the base of its WebSocket URLs (a proxy in front of it); `env`: BOTCALL_* settings.
 */
export async function startServer({ publicUrl = null, env = {} } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'botcall-sdkjs-'));
  const port = await freeTcpPort();
  const mediaPort = await freeUdpPort();
  const args = ['-m', 'botcall.cli', 'serve', '--host', '127.0.0.1', '--port', String(port), '--media-host', '127.0.0.1', '--media-port', String(mediaPort), '--data-dir', dataDir, '--log-level', 'WARNING'];
  if (publicUrl) args.push(`--public-url=${publicUrl}`);
  const child = new Child(spawn(PYTHON, args, { env: { ...ENV, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }), 'server');
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.process.exitCode !== null) throw new Error(`server exited ${child.process.exitCode}:\n${child.stderr}`);
    try {
      const response = await fetch(`${url}/healthz`);
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`server did not answer /healthz in 60 s:\n${child.stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    port,
    mediaPort,
    dataDir,
    child,
    /** A dev-issuer attestation (one per join: a join consumes its jti). */
    async token(agent, controller = 'gopi') {
      const { stdout } = await promisify(execFile)(PYTHON, ['-m', 'botcall.cli', 'token', '--agent', agent, '--controller', controller, '--data-dir', dataDir], { env: ENV });
      return stdout.trim();
    },
    async createRoom(token, body = {}) {
      return requestJson('POST', `${url}/v1/rooms/create`, { body, bearer: token });
    },
    async deleteRoom(token, roomId) {
      const response = await fetch(`${url}/v1/rooms/${roomId}`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } });
      if (!response.ok) throw new Error(`DELETE room: ${response.status} ${await response.text()}`);
    },
    async stop() {
      await child.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Run `botcall bot` (the Python CLI bot): it plays `play` (a WAV), records what
 * it hears to `record`, prints the room's events as JSON lines, and exits when
 * the room closes. The lead adapts this to sdk/python's CLI when it lands.
 */
export function pythonBot(server, roomId, token, { play = null, record = null, transport = 'udp', seconds = 120 } = {}) {
  const args = ['-m', 'botcall.cli', 'bot', '--server', server.url, '--room', roomId, '--token', token, '--transport', transport, '--seconds', String(seconds)];
  if (play) args.push('--play', play);
  if (record) args.push('--record', record);
  return new Child(spawn(PYTHON, args, { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] }), 'python bot');
}

/**
 * A human in the room: the repository's simulated browser (tests/kit, real
 * DTLS-SRTP over UDP) driven by test/human.py. `speak()` makes it talk for 3 s.
 */
export function human(server, room) {
  const invite = room.invite_url.split('#invite=')[1];
  const script = fileURLToPath(new URL('./human.py', import.meta.url));
  const child = new Child(spawn(PYTHON, [script, server.url, room.room_id, invite, String(server.mediaPort)], { env: ENV, stdio: ['pipe', 'pipe', 'pipe'] }), 'human');
  child.speak = () => child.process.stdin.write('speak\n');
  const stop = child.stop.bind(child);
  child.stop = async () => {
    child.process.stdin.end();
    await Promise.race([child.exited, new Promise((r) => setTimeout(r, 3000))]);
    await stop();
  };
  return child;
}

export function tempDir() {
  return mkdtempSync(join(tmpdir(), 'botcall-sdkjs-test-'));
}

/**
 * A sine tone, int16 mono, after `leadIn` seconds of silence. The relay's
 * level-based speech detector learns a stream's noise floor from its first
 * packets, so a stream that starts loud is never "speech" (botcall/audio/vad.py
 * `_NoiseFloor`): a lead-in lets the test wait for `speech_stopped`.
 */
export function toneAfterSilence(frequency, seconds, sampleRate, leadIn = 0.2) {
  const lead = Math.round(leadIn * sampleRate);
  const samples = new Int16Array(lead + Math.round(seconds * sampleRate));
  samples.set(tone(frequency, seconds, sampleRate), lead);
  return samples;
}

/** A sine tone, int16 mono. */
export function tone(frequency, seconds, sampleRate, amplitude = 0.3) {
  const samples = new Int16Array(Math.round(seconds * sampleRate));
  for (let i = 0; i < samples.length; i++) samples[i] = Math.round(amplitude * 32767 * Math.sin((2 * Math.PI * frequency * i) / sampleRate));
  return samples;
}

export function writeWav(path, samples, sampleRate) {
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + samples.length * 2, 4);
  header.write('WAVEfmt ', 8);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20);
  header.writeUInt16LE(1, 22);
  header.writeUInt32LE(sampleRate, 24);
  header.writeUInt32LE(sampleRate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(samples.length * 2, 40);
  writeFileSync(path, Buffer.concat([header, Buffer.from(samples.buffer, samples.byteOffset, samples.byteLength)]));
}

/** A mono 16-bit PCM WAV: its samples and rate (the layout write_wav produces). */
export function readWav(path) {
  const data = readFileSync(path);
  let offset = 12;
  let sampleRate = 0;
  while (offset + 8 <= data.length) {
    const id = data.toString('ascii', offset, offset + 4);
    const size = data.readUInt32LE(offset + 4);
    if (id === 'fmt ') sampleRate = data.readUInt32LE(offset + 12);
    if (id === 'data') {
      const bytes = data.subarray(offset + 8, offset + 8 + size);
      const samples = new Int16Array(bytes.length >> 1);
      for (let i = 0; i < samples.length; i++) samples[i] = bytes.readInt16LE(i * 2);
      return { samples, sampleRate };
    }
    offset += 8 + size;
  }
  throw new Error(`${path}: no data chunk`);
}

/** The DFT power of `samples` at `frequency` (one bin, any frequency). */
export function power(samples, sampleRate, frequency) {
  let re = 0;
  let im = 0;
  const w = (2 * Math.PI * frequency) / sampleRate;
  for (let i = 0; i < samples.length; i++) {
    re += samples[i] * Math.cos(w * i);
    im += samples[i] * Math.sin(w * i);
  }
  return (re * re + im * im) / samples.length;
}

/**
 * The strongest frequency (100–2000 Hz, 2 Hz steps) of `samples`, and the share
 * of the signal's power within ±20 Hz of it (a clean tone: near 1).
 */
export function dominantFrequency(samples, sampleRate) {
  let best = 0;
  let bestPower = -1;
  for (let f = 100; f <= 2000; f += 2) {
    const p = power(samples, sampleRate, f);
    if (p > bestPower) {
      bestPower = p;
      best = f;
    }
  }
  let energy = 0;
  for (let i = 0; i < samples.length; i++) energy += samples[i] * samples[i];
  // A sine of amplitude A has energy N*A^2/2 and DFT power N*A^2/4 at its bin.
  const share = energy > 0 ? (2 * bestPower) / energy : 0;
  return { frequency: best, share };
}

/** Seconds of `samples` whose 20 ms RMS is above -40 dBFS. */
export function loudSeconds(samples, sampleRate) {
  const frame = sampleRate / 50;
  let loud = 0;
  for (let start = 0; start + frame <= samples.length; start += frame) {
    let sum = 0;
    for (let i = start; i < start + frame; i++) sum += samples[i] * samples[i];
    if (Math.sqrt(sum / frame) > 32768 * 0.01) loud += 1;
  }
  return loud / 50;
}

/** The longest run of loud 20 ms frames, as a sample array (for a frequency estimate). */
export function loudestRun(samples, sampleRate) {
  const frame = sampleRate / 50;
  let bestStart = 0;
  let bestLength = 0;
  let runStart = -1;
  for (let start = 0; start + frame <= samples.length + frame; start += frame) {
    let sum = 0;
    const end = Math.min(samples.length, start + frame);
    for (let i = start; i < end; i++) sum += samples[i] * samples[i];
    const loud = end > start && Math.sqrt(sum / (end - start)) > 32768 * 0.01;
    if (loud && runStart < 0) runStart = start;
    if ((!loud || end === samples.length) && runStart >= 0) {
      const length = (loud ? end : start) - runStart;
      if (length > bestLength) {
        bestLength = length;
        bestStart = runStart;
      }
      runStart = -1;
    }
  }
  return samples.subarray(bestStart, bestStart + bestLength);
}

/** Chunks of `samples` of `chunkMs` each, as an async iterator (a streamed text-to-speech). */
export async function* chunked(samples, sampleRate, chunkMs, marks = {}) {
  const size = Math.round((sampleRate * chunkMs) / 1000);
  for (let start = 0; start < samples.length; start += size) {
    for (const [name, atMs] of Object.entries(marks)) {
      const at = Math.round((atMs * sampleRate) / 1000);
      if (at >= start && at < start + size) yield { mark: name };
    }
    yield samples.subarray(start, start + size);
    await new Promise((r) => setImmediate(r));
  }
}

/**
 * A TCP proxy in front of the server that can take one client's network down:
 * `goDown(path)` cuts every connection and holds new ones whose request names
 * `path` (a session's WebSocket) until `comeBack()`; others pass.
 */
export class HoldingProxy {
  constructor() {
    this.targetPort = 0;
    this.cut = 0;
    this._pairs = new Set();
    this._held = null;
    this._heldPath = '';
    this._server = createServer((client) => this._handle(client));
  }

  async listen() {
    this._server.listen(0, '127.0.0.1');
    await once(this._server, 'listening');
    return this._server.address().port;
  }

  _handle(client) {
    client.on('error', () => {});
    client.once('data', async (first) => {
      client.pause();
      if (this._held && first.includes(this._heldPath)) await this._held.promise;
      if (client.destroyed) return;
      const upstream = tcpConnect(this.targetPort, '127.0.0.1');
      upstream.on('error', () => {});
      const pair = [client, upstream];
      this._pairs.add(pair);
      const close = () => {
        this._pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('close', close);
      upstream.on('close', close);
      upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  goDown(path) {
    let release;
    const promise = new Promise((resolve) => {
      release = resolve;
    });
    this._held = { promise, release };
    this._heldPath = path;
    for (const pair of [...this._pairs]) {
      this.cut += 1;
      for (const socket of pair) socket.destroy();
    }
  }

  comeBack() {
    const held = this._held;
    this._held = null;
    held?.release();
  }

  async close() {
    this.comeBack();
    for (const pair of [...this._pairs]) for (const socket of pair) socket.destroy();
    this._server.close();
  }
}
