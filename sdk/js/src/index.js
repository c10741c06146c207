// BotCall SDK for Node.js: a bot joins a room over the WebSocket transport
// (docs/protocol.md "Audio over the WebSocket"), speaks through the server's
// playout ("Bot speech") and hears every speaker, with pcm16 or Opus.

import { endianness } from 'node:os';

import WebSocket from 'ws';
import OpusScript from 'opusscript';

import { DropOldestQueue } from './queue.js';
import { Framer, OPUS_RATES, PCM16_RATES, Resampler, toInt16 } from './audio.js';
import {
  BadPacketError,
  OPUS_PAYLOAD_TYPE,
  PCM16_CONCEALED_PAYLOAD_TYPE,
  audioLevel,
  buildRtp,
  jwtClaims,
  parseRtpUntrusted,
} from './wire.js';

export { BadPacketError } from './wire.js';

/** Frames kept for a slow `audio()` reader: 10 s of 20 ms frames from 3 speakers. */
export const MAX_QUEUED_FRAMES = 1500;
/** Events kept for a slow `events()` reader (the server keeps 256 per socket too). */
export const MAX_QUEUED_EVENTS = 256;
/** How far ahead of the playout `say()` sends Opus by default (the server takes up to 120 s). */
export const DEFAULT_MAX_AHEAD_MS = 60_000;
/**
 * The same for pcm16. The relay reads a bot's next pcm16 message only once the
 * previous one is encoded (at 5x real time beyond 1 s ahead), so PCM sent far
 * ahead waits in TCP, and a `clear` sent after it waits behind it: measured, an
 * interrupt 2 s into 6 s sent at once took effect 2.2 s late. 2 s ahead keeps
 * that under about 0.2 s.
 */
export const DEFAULT_PCM16_MAX_AHEAD_MS = 2_000;
/** The server keeps a dropped bot's session this long (`ws_connect_grace_s`); we stop trying a bit earlier. */
const RECONNECT_WINDOW_MS = 25_000;
/** pcm16 frames per binary message: 50 x 20 ms = 1 s, at most 96 KB (the limit is 128 KiB). */
const FRAMES_PER_MESSAGE = 50;
/** Above this many unsent bytes on the socket, `say()` waits for the kernel to take them. */
const HIGH_WATER_BYTES = 256 * 1024;
/** Close codes after which the session is over and a reconnect is pointless (docs/protocol.md "Close codes"). */
const FINAL_CLOSE_CODES = new Set([1000, 1001, 1008, 1009, 4400, 4401, 4404, 4408, 4409, 4410, 4411]);
const INTERNAL_MARK = 'botcall-sdk:';
/**
 * The server takes control, chat, ping and mark messages at 20 a second with a
 * burst of 40, and refuses the rest (docs/protocol.md "WebSocket channel"): a
 * refused mark would never fire. We stay a little under it, waiting instead.
 */
const MESSAGE_RATE = 18;
const MESSAGE_BURST = 36;
const FRAME_MS = 20;
const RTP_CLOCK = 48_000;

/** The server refused an HTTP request; `code` is its machine code (docs/protocol.md "Error codes"). */
export class BotCallHttpError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.name = 'BotCallHttpError';
    this.status = status;
    this.code = code;
  }
}

/** The call could not be set up or has ended; `code` says why when the server said. */
export class CallError extends Error {
  constructor(message, code = null) {
    super(message);
    this.name = 'CallError';
    this.code = code;
  }
}

function camelKey(key) {
  return key.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
}

/** A server event with camelCase field names (`type` keeps the protocol's name). */
function camelize(value) {
  if (Array.isArray(value)) return value.map(camelize);
  if (value === null || typeof value !== 'object') return value;
  const out = {};
  for (const [key, item] of Object.entries(value)) out[camelKey(key)] = key === 'type' ? item : camelize(item);
  return out;
}

function isChunk(item) {
  return ArrayBuffer.isView(item) || item instanceof ArrayBuffer;
}

// Typed arrays use the machine's byte order; the wire is little-endian.
const LITTLE_ENDIAN = endianness() === 'LE';

/** Int16 samples from little-endian bytes (a copy). */
function int16FromLE(bytes) {
  const samples = new Int16Array(bytes.length >> 1);
  if (LITTLE_ENDIAN) {
    new Uint8Array(samples.buffer).set(bytes.subarray(0, samples.length * 2));
  } else {
    for (let i = 0; i < samples.length; i++) samples[i] = bytes.readInt16LE(i * 2);
  }
  return samples;
}

/** Little-endian bytes of int16 frames, concatenated. */
function leFromInt16(frames) {
  const bytes = Buffer.allocUnsafe(frames.reduce((n, f) => n + f.length * 2, 0));
  let offset = 0;
  for (const frame of frames) {
    if (LITTLE_ENDIAN) {
      bytes.set(new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength), offset);
      offset += frame.byteLength;
    } else {
      for (let i = 0; i < frame.length; i++, offset += 2) bytes.writeInt16LE(frame[i], offset);
    }
  }
  return bytes;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

/**
 * Join a room as a bot and open its WebSocket.
 *
 * @param {string} server the server's base URL, `http://` or `https://`.
 * @param {string} roomId the room (its owner must be the token's controller).
 * @param {string} token the bot's BotAuth attestation with scope `call:voice`.
 * @param {import('./index.js').ConnectOptions} [options]
 * @returns {Promise<Call>}
 * @throws {BotCallHttpError} the join was refused. {CallError} the WebSocket failed.
 */
export async function connect(server, roomId, token, options = {}) {
  const {
    encoding = 'opus',
    sampleRate = 48_000,
    sendSampleRate = undefined,
    receive = 'separate',
    textChat = true,
    agentId = undefined,
    maxAheadMs = encoding === 'pcm16' ? DEFAULT_PCM16_MAX_AHEAD_MS : DEFAULT_MAX_AHEAD_MS,
    reconnect = true,
    signal = undefined,
  } = options;
  if (!/^https?:\/\//.test(String(server))) {
    throw new TypeError(`server must be an http:// or https:// URL, got ${JSON.stringify(server)}`);
  }
  if (encoding !== 'opus' && encoding !== 'pcm16') throw new TypeError('encoding is "opus" or "pcm16"');
  const rates = encoding === 'opus' ? OPUS_RATES : PCM16_RATES;
  if (!rates.has(sampleRate)) throw new RangeError(`sampleRate ${sampleRate} is not one of ${[...rates].join(', ')}`);
  if (sendSampleRate !== undefined && (encoding !== 'pcm16' || !PCM16_RATES.has(sendSampleRate))) {
    throw new RangeError('sendSampleRate is for pcm16: 8000, 16000, 24000 or 48000');
  }
  const media = { transport: 'websocket', encoding };
  if (encoding === 'pcm16') {
    media.receive_sample_rate = sampleRate;
    media.send_sample_rate = sendSampleRate ?? sampleRate;
  }
  if (receive !== 'separate') media.receive = receive;
  const body = {
    agent_id: agentId ?? String(jwtClaims(token).sub ?? ''),
    room_id: roomId,
    attestation: { token },
    capabilities: { audio_in: true, audio_out: true, video: false, text_chat: textChat },
    media,
  };
  const base = String(server).replace(/\/+$/, '');
  const answer = await requestJson('POST', `${base}/v1/join`, { body, signal });
  const call = new Call(answer, { roomId, encoding, sampleRate, maxAheadMs, reconnect });
  try {
    await call._open();
    signal?.throwIfAborted();
  } catch (err) {
    // Never leave a ghost: a half-made call leaves at once.
    await call.leave();
    throw err;
  }
  return call;
}

/**
 * One HTTP request with a JSON body and answer.
 * @returns {Promise<any>} the parsed answer.
 * @throws {BotCallHttpError} on a non-2xx status.
 */
export async function requestJson(method, url, { body = undefined, bearer = undefined, signal = undefined, timeoutMs = 10_000 } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const timeout = AbortSignal.timeout(timeoutMs);
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const error = parsed?.error ?? {};
    throw new BotCallHttpError(response.status, error.code ?? 'http_error', error.message ?? text.slice(0, 200));
  }
  return parsed;
}

/** One bot's membership of a room. Made by {@link connect}. */
export class Call {
  constructor(answer, { roomId, encoding, sampleRate, maxAheadMs, reconnect }) {
    this.join = answer;
    this.sessionId = answer.session_id;
    this.participantId = answer.participant_id;
    this.roomId = answer.room_id ?? roomId;
    this.media = answer.media;
    this.ssrc = answer.media.ssrc >>> 0;
    this.encoding = encoding;
    /** The rate of the PCM `audio()` yields. */
    this.sampleRate = sampleRate;
    /** The rate pcm16 goes to the server at (Opus: the encoder picks its own). */
    this.sendSampleRate = encoding === 'pcm16' ? answer.media.send_sample_rate : RTP_CLOCK;
    /** @type {Map<string, object>} participantId -> participant, as the events tell. */
    this.participants = new Map();
    this.closeReason = null;
    this.counters = { framesSent: 0, framesReceived: 0, malformed: 0, decodeErrors: 0, reconnects: 0, replayed: 0, duplicates: 0, eventsLost: 0 };
    this._url = `${answer.websocket_url}?audio=binary`;
    // The highest event seq seen (docs/protocol.md "Resuming"): sent as last_seq
    // on a reconnect; events at or below it are duplicates. null until the first
    // welcome (or with a server that does not number events).
    this._lastSeq = null;
    // While a resume's replay is read: events up to this seq are replays.
    this._replayUntil = 0;
    this._maxAheadMs = maxAheadMs;
    this._reconnect = reconnect;
    this._ws = null;
    this._leaving = false;
    this._finished = false;
    this._frames = new DropOldestQueue(MAX_QUEUED_FRAMES);
    this._events = new DropOldestQueue(MAX_QUEUED_EVENTS);
    this._ssrcToParticipant = new Map();
    this._origins = new Map(); // ssrc -> first RTP timestamp (stream_started)
    this._decoders = new Map(); // ssrc -> OpusScript
    this._encoders = new Map(); // rate -> OpusScript
    if (answer.media.mix_ssrc != null) this._ssrcToParticipant.set(answer.media.mix_ssrc >>> 0, 'mix');
    // Our stream: RTP numbering, and the stream clock in 48 kHz samples (the
    // server's queued_ms, since every frame we send follows the one before).
    this._seq = Math.floor(Math.random() * 0x10000);
    this._timestamp = Math.floor(Math.random() * 0x100000000);
    this._position = 0;
    this._anchor = { position: 0, wall: 0 }; // where the server's playout was last known to restart
    // Speech bookkeeping (see say()).
    this._sendTail = Promise.resolve();
    this._speeches = new Set(); // started or queued, not finished
    this._marks = []; // marks sent and not yet reported: {name, resolve}
    this._clearsSent = 0;
    this._clearsAnswered = 0;
    this._clears = []; // waiting for `cleared`: {resolve, internal}
    this._nextSpeechId = 1;
    let resolveClosed;
    /** Resolves with the reason when the call ends. */
    this.closed = new Promise((resolve) => {
      resolveClosed = resolve;
    });
    this._resolveClosed = resolveClosed;
    this._readyPromise = null;
    this._tokens = MESSAGE_BURST;
    this._tokensAt = performance.now();
    this._messageTurn = Promise.resolve();
  }

  // --- the socket ---------------------------------------------------------------------

  /** Open the WebSocket and wait for `welcome` (10 s). */
  async _open() {
    // No permessage-deflate: audio does not compress, and zlib cost more CPU than
    // everything else in a call (measured with bench/overhead.mjs).
    // A resume names the last event seen: the server replays what came after.
    const url = this._lastSeq === null ? this._url : `${this._url}&last_seq=${this._lastSeq}`;
    const ws = new WebSocket(url, { handshakeTimeout: 10_000, maxPayload: 256 * 1024, perMessageDeflate: false });
    ws.binaryType = 'nodebuffer';
    const welcomed = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new CallError('no welcome from the server within 10 s')), 10_000);
      ws.once('error', (err) => {
        clearTimeout(timer);
        reject(new CallError(`WebSocket failed: ${err.message}`));
      });
      ws.once('close', (code, reason) => {
        clearTimeout(timer);
        reject(new CallError(`the server closed the WebSocket at once (${code} ${reason})`, code));
      });
      this._onWelcome = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    ws.on('message', (data, isBinary) => this._onMessage(data, isBinary));
    this._ws = ws;
    await welcomed;
    ws.removeAllListeners('error');
    ws.removeAllListeners('close');
    ws.on('error', () => {}); // the 'close' that follows decides
    ws.on('close', (code, reason) => this._onClose(ws, code, reason.toString()));
  }

  async _ready() {
    if (this._finished) throw new CallError(`the call has ended: ${this.closeReason}`);
    if (this._readyPromise) await this._readyPromise;
    if (this._finished) throw new CallError(`the call has ended: ${this.closeReason}`);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    if (this._leaving || this._finished || !this._reconnect || FINAL_CLOSE_CODES.has(code)) {
      this._finish(this.closeReason ?? (reason || `closed (${code})`));
      return;
    }
    this._events.put({ type: 'disconnected', code, reason });
    this._readyPromise = this._reconnectLoop(code);
  }

  /** The socket dropped: open it again within the server's grace window (docs/protocol.md "WebSocket channel"). */
  async _reconnectLoop(code) {
    const deadline = Date.now() + RECONNECT_WINDOW_MS;
    let delay = 100;
    while (!this._finished && !this._leaving && Date.now() < deadline) {
      try {
        await this._open();
        this.counters.reconnects += 1;
        this._readyPromise = null;
        this._events.put({ type: 'reconnected' });
        return;
      } catch (err) {
        if (err instanceof CallError && FINAL_CLOSE_CODES.has(err.code)) break;
        await sleep(delay);
        delay = Math.min(2000, delay * 2);
      }
    }
    this._readyPromise = null;
    this._finish(this.closeReason ?? `disconnected (${code}) and could not reconnect`);
  }

  _finish(reason) {
    if (this._finished) return;
    this._finished = true;
    this.closeReason = reason;
    for (const speech of this._speeches) speech._settle({ completed: false, interrupted: false, reason: 'closed' });
    for (const mark of this._marks) mark.resolve(null);
    this._marks = [];
    for (const clear of this._clears) clear.resolve(null);
    this._clears = [];
    for (const decoder of this._decoders.values()) decoder.delete();
    this._decoders.clear();
    for (const encoder of this._encoders.values()) encoder.delete();
    this._encoders.clear();
    this._frames.close();
    this._events.close();
    this._resolveClosed(reason);
  }

  async _sendJson(message) {
    await this._ready();
    await this._send(JSON.stringify(message));
  }

  /** Wait for a token of the message budget (a token bucket shared by every JSON message). */
  async _takeMessageToken() {
    for (;;) {
      const now = performance.now();
      this._tokens = Math.min(MESSAGE_BURST, this._tokens + ((now - this._tokensAt) / 1000) * MESSAGE_RATE);
      this._tokensAt = now;
      if (this._tokens >= 1) {
        this._tokens -= 1;
        return;
      }
      await sleep(((1 - this._tokens) / MESSAGE_RATE) * 1000);
    }
  }

  async _send(data) {
    if (typeof data === 'string') {
      // Messages wait their turn in order, so a mark never overtakes audio sent after it.
      const turn = this._messageTurn.then(() => this._takeMessageToken());
      this._messageTurn = turn;
      await turn;
    }
    let ws;
    for (;;) {
      await this._ready();
      ws = this._ws;
      if (ws.readyState === WebSocket.OPEN) break;
      // Dropping: its 'close' starts the reconnect that _ready() waits for.
      if (ws.readyState !== WebSocket.CLOSED) await new Promise((resolve) => ws.once('close', resolve));
    }
    if (ws.bufferedAmount > HIGH_WATER_BYTES) {
      // Let TCP slow us down rather than buffering without bound.
      await new Promise((resolve) => ws.send(data, () => resolve()));
    } else {
      ws.send(data);
    }
  }

  // --- receiving ----------------------------------------------------------------------

  _onMessage(data, isBinary) {
    if (isBinary) {
      this._onMedia(data);
      return;
    }
    let event;
    try {
      event = JSON.parse(data.toString('utf8'));
    } catch {
      this.counters.malformed += 1;
      return;
    }
    if (event === null || typeof event !== 'object' || typeof event.type !== 'string') {
      this.counters.malformed += 1;
      return;
    }
    this._onEvent(event);
  }

  _learn(participant) {
    if (!participant || typeof participant.participant_id !== 'string') return;
    this.participants.set(participant.participant_id, camelize(participant));
    if (Number.isInteger(participant.ssrc)) this._ssrcToParticipant.set(participant.ssrc >>> 0, participant.participant_id);
  }

  /**
   * Track the event numbering: false for a duplicate (seen before a drop); a
   * gap on a live socket is reported as `events_lost`, like the server's own.
   */
  _inSequence(raw) {
    if (raw.type === 'events_lost') {
      if (Number.isInteger(raw.count)) this.counters.eventsLost += raw.count;
      if (this._lastSeq !== null && Number.isInteger(raw.last_seq)) this._lastSeq = Math.max(this._lastSeq, raw.last_seq);
      return true;
    }
    const seq = raw.seq;
    if (!Number.isInteger(seq) || this._lastSeq === null) return true;
    if (seq <= this._lastSeq) {
      this.counters.duplicates += 1;
      return false;
    }
    if (seq > this._lastSeq + 1) {
      const firstSeq = this._lastSeq + 1;
      this.counters.eventsLost += seq - firstSeq;
      this._events.put({ type: 'events_lost', firstSeq, lastSeq: seq - 1, count: seq - firstSeq });
    }
    if (seq <= this._replayUntil) this.counters.replayed += 1;
    this._lastSeq = seq;
    return true;
  }

  _onEvent(raw) {
    if (raw.type !== 'welcome' && raw.type !== 'audio' && !this._inSequence(raw)) return;
    switch (raw.type) {
      case 'welcome':
        if (Number.isInteger(raw.last_seq)) {
          // A first connection is at the newest event (nothing is replayed to it).
          if (this._lastSeq === null) this._lastSeq = raw.last_seq;
          this._replayUntil = raw.last_seq;
        }
        for (const participant of raw.participants ?? []) this._learn(participant);
        if (this._onWelcome) {
          const onWelcome = this._onWelcome;
          this._onWelcome = null;
          onWelcome();
        }
        return;
      case 'participant_joined':
        this._learn(raw.participant);
        break;
      case 'participant_left': {
        const gone = this.participants.get(raw.participant_id);
        this.participants.delete(raw.participant_id);
        if (gone && Number.isInteger(gone.ssrc)) {
          const ssrc = gone.ssrc >>> 0;
          this._ssrcToParticipant.delete(ssrc);
          this._origins.delete(ssrc);
          this._decoders.get(ssrc)?.delete();
          this._decoders.delete(ssrc);
        }
        break;
      }
      case 'stream_started':
        if (Number.isInteger(raw.ssrc) && Number.isInteger(raw.rtp_timestamp)) {
          this._origins.set(raw.ssrc >>> 0, raw.rtp_timestamp >>> 0);
        }
        break;
      case 'room_closed':
        this.closeReason = `room closed: ${raw.reason}`;
        break;
      case 'mark':
        if (this._onMark(raw)) return;
        break;
      case 'cleared':
        this._onCleared(raw, null);
        break;
      case 'interrupted':
        this._onCleared(raw, raw.by ?? null);
        break;
      case 'audio':
        return; // JSON audio: we asked for binary frames
      default:
        break;
    }
    this._events.put(camelize(raw));
  }

  _onMedia(data) {
    let packet;
    try {
      packet = parseRtpUntrusted(data);
    } catch (err) {
      if (!(err instanceof BadPacketError)) throw err;
      this.counters.malformed += 1;
      return;
    }
    const ssrc = packet.ssrc;
    const participantId = this._ssrcToParticipant.get(ssrc) ?? null;
    let pcm;
    let streamMs;
    let concealed = false;
    if (this.encoding === 'pcm16') {
      // The server decoded and buffered it; the timestamp is the stream position at our rate.
      pcm = int16FromLE(packet.payload);
      streamMs = Math.floor((packet.timestamp * 1000) / this.sampleRate);
      concealed = packet.payloadType === PCM16_CONCEALED_PAYLOAD_TYPE;
    } else {
      if (packet.payloadType !== OPUS_PAYLOAD_TYPE) {
        this.counters.malformed += 1;
        return;
      }
      let decoder = this._decoders.get(ssrc);
      if (!decoder) {
        decoder = new OpusScript(this.sampleRate, 1, OpusScript.Application.VOIP);
        this._decoders.set(ssrc, decoder);
      }
      try {
        pcm = int16FromLE(decoder.decode(packet.payload));
      } catch {
        this.counters.decodeErrors += 1;
        return;
      }
      if (!this._origins.has(ssrc)) this._origins.set(ssrc, packet.timestamp);
      streamMs = Math.floor(((packet.timestamp - this._origins.get(ssrc)) >>> 0) / (RTP_CLOCK / 1000));
    }
    this.counters.framesReceived += 1;
    this._frames.put({ participantId, ssrc, sampleRate: this.sampleRate, pcm, streamMs, wallTime: Date.now(), concealed, seq: packet.seq });
  }

  /** Our own marks resolve their promise; internal ones stay out of `events()`. Returns true to hide the event. */
  _onMark(raw) {
    const index = this._marks.findIndex((mark) => mark.name === raw.name);
    if (index >= 0) {
      const [mark] = this._marks.splice(index, 1);
      mark.resolve({ name: raw.name, playedMs: raw.played_ms });
    }
    return typeof raw.name === 'string' && raw.name.startsWith(INTERNAL_MARK);
  }

  /** A `cleared` (answer to our clear) or `interrupted` (a human barged in, `by`). */
  _onCleared(raw, by) {
    const dropped = new Set(raw.marks_dropped ?? []);
    for (const name of dropped) {
      const index = this._marks.findIndex((mark) => mark.name === name);
      if (index >= 0) this._marks.splice(index, 1)[0].resolve(null);
    }
    let epoch = Infinity; // an interruption cuts everything we had started
    if (by === null) {
      const clear = this._clears.shift();
      epoch = ++this._clearsAnswered;
      clear?.resolve(raw);
    }
    this._anchor = { position: this._position, wall: Date.now() };
    let cutMidSend = false;
    for (const speech of [...this._speeches]) {
      if (speech._epoch !== null && speech._epoch >= epoch) continue; // started after that clear
      if (speech._epoch === null && by === null) continue; // not started: a clear of ours does not touch it
      if (speech._sending) cutMidSend = true;
      speech._cut(raw, by);
    }
    if (by !== null && cutMidSend) {
      // Frames we sent after the server cleared would still play: drop them too.
      this._sendTail = this._sendTail.then(() => this._clear(true)).catch(() => {});
    }
  }

  /** @returns {AsyncIterableIterator<import('./index.js').AudioFrame>} every speaker's 20 ms frames (one reader). */
  audio() {
    return this._frames;
  }

  /** @returns {AsyncIterableIterator<import('./index.js').CallEvent>} the room's events (one reader). */
  events() {
    return this._events;
  }

  // --- speaking -------------------------------------------------------------------------

  /**
   * Speak `source`, sent ahead of time and played out by the server. Speeches
   * queue in the order said.
   * @param {*} source PCM (Int16Array, Float32Array, Buffer of int16 LE), or an
   *   (async) iterable of such chunks and `{mark: name}` objects.
   * @param {{sampleRate?: number}} [options] the source's rate (default: the call's send rate).
   * @returns {Speech}
   */
  say(source, options = {}) {
    const speech = new Speech(this, source, options.sampleRate ?? (this.encoding === 'pcm16' ? this.sendSampleRate : RTP_CLOCK), this._nextSpeechId++);
    this._speeches.add(speech);
    this._sendTail = this._sendTail.then(() => speech._run());
    return speech;
  }

  /** Drop everything queued (ours and the server's); resolves with the `cleared` event. */
  async clear() {
    for (const speech of this._speeches) speech._abort();
    const idle = this._sendTail;
    const answer = new Promise((resolve) => {
      this._sendTail = idle.then(() => this._clear(false, resolve)).catch(() => resolve(null));
    });
    return camelize(await answer);
  }

  async _clear(internal, resolve = () => {}) {
    await this._ready();
    this._clearsSent += 1;
    this._clears.push({ resolve, internal });
    await this._send(JSON.stringify({ type: 'clear' }));
  }

  _positionMs() {
    return this._position / (RTP_CLOCK / 1000);
  }

  /** Our estimate of the server's `played_ms`, in 48 kHz samples: real time since the queue last restarted. */
  _estimatedPlayed() {
    return Math.min(this._position, this._anchor.position + (Date.now() - this._anchor.wall) * (RTP_CLOCK / 1000));
  }

  /** Wait while more than maxAheadMs is queued past our estimate of the server's playout (or until `aborted`). */
  async _paceAhead(aborted) {
    for (;;) {
      const aheadMs = (this._position - this._estimatedPlayed()) / (RTP_CLOCK / 1000);
      if (aheadMs <= this._maxAheadMs) return;
      const stop = await Promise.race([sleep(Math.min(1000, aheadMs - this._maxAheadMs + 5)), aborted.then(() => true)]);
      if (stop) return;
    }
  }

  _encoder(rate) {
    let encoder = this._encoders.get(rate);
    if (!encoder) {
      encoder = new OpusScript(rate, 1, OpusScript.Application.VOIP);
      this._encoders.set(rate, encoder);
    }
    return encoder;
  }

  /**
   * Send whole 20 ms frames at `rate` (the Speech made sure it is one the session takes);
   * with `marker`, the first packet has the RTP marker bit (a speech's first packet).
   */
  async _sendFrames(frames, rate, marker = false) {
    if (!frames.length) return;
    await this._ready();
    if (this._estimatedPlayed() >= this._position) {
      // Nothing queued: this frame plays at once and fixes the schedule.
      this._anchor = { position: this._position, wall: Date.now() };
    }
    if (this.encoding === 'pcm16') {
      for (let start = 0; start < frames.length; start += FRAMES_PER_MESSAGE) {
        const batch = frames.slice(start, start + FRAMES_PER_MESSAGE);
        await this._send(leFromInt16(batch));
        this.counters.framesSent += batch.length;
        this._position += batch.length * (RTP_CLOCK / 50);
      }
      return;
    }
    const encoder = this._encoder(rate);
    let first = marker;
    for (const frame of frames) {
      const payload = encoder.encode(leFromInt16([frame]), frame.length);
      const { level, voice } = audioLevel(frame);
      const packet = buildRtp({ payloadType: OPUS_PAYLOAD_TYPE, seq: this._seq, timestamp: this._timestamp, ssrc: this.ssrc, payload, level, voice, marker: first });
      first = false;
      this._seq = (this._seq + 1) & 0xffff;
      this._timestamp = (this._timestamp + RTP_CLOCK / 50) >>> 0;
      await this._send(packet);
      this.counters.framesSent += 1;
      this._position += RTP_CLOCK / 50;
    }
  }

  /**
   * Send a mark at the current end of our stream. Resolves once sent, with
   * `played`: a promise of the `mark` event (null if the mark was dropped).
   */
  async _sendMark(name) {
    await this._ready();
    const played = new Promise((resolve) => this._marks.push({ name, resolve }));
    await this._send(JSON.stringify({ type: 'mark', name }));
    return { played };
  }

  // --- control ------------------------------------------------------------------------

  /** Stop (or resume) the relay forwarding our audio. */
  async mute(muted = true) {
    await this._sendJson({ type: 'control', action: 'mute', value: Boolean(muted) });
  }

  async unmute() {
    await this.mute(false);
  }

  /** Send a chat message to the room (needs `textChat`, on by default). */
  async chat(text) {
    await this._sendJson({ type: 'chat', text: String(text) });
  }

  /** Ask for a `pong` event with this nonce: everything sent before it has been handled. */
  async ping(nonce = '') {
    await this._sendJson({ type: 'ping', nonce: String(nonce) });
  }

  /** Tell the server how long audio we receive waits in our buffers before it is heard (for `heardMs`). */
  async playoutDelay(ms) {
    await this._sendJson({ type: 'playout_delay', ms: Math.round(ms) });
  }

  /** Leave the room (at once: `participant_left` goes out) and close the socket. Safe to call twice. */
  async leave() {
    if (this._finished) return;
    this._leaving = true;
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: 'control', action: 'leave' }));
      const closed = new Promise((resolve) => ws.once('close', resolve));
      await Promise.race([closed, sleep(2000)]);
      if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
    } else if (ws) {
      ws.terminate();
    }
    this._finish(this.closeReason ?? 'left');
  }

  async [Symbol.asyncDispose]() {
    await this.leave();
  }
}

/** A handle on one `say()`: its marks, its end, and its interruption. */
export class Speech {
  constructor(call, source, sampleRate, id) {
    this.call = call;
    this.id = id;
    this.sampleRate = sampleRate;
    /** Stream position (ms) where this speech starts, once it started sending. */
    this.startMs = null;
    /** Audio sent so far (ms). */
    this.sentMs = 0;
    /** Set when a human barged in on it: the interrupter's participant id. */
    this.interruptedBy = null;
    this.result = null;
    this._source = source;
    this._epoch = null;
    this._sending = false;
    this._aborted = false;
    this._wakeAbort = null;
    this._pendingMarks = [];
    this._endMark = `${INTERNAL_MARK}end:${id}`;
    this._endSent = false;
    this._finishing = false;
    let settle;
    this._done = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    this._settleWith = settle;
    // A speech nobody awaits must not crash the process with an unhandled rejection.
    this._done.catch(() => {});
  }

  /** Resolves when the speech ended: played to the end, interrupted, or the call closed. */
  done() {
    return this._done;
  }

  /**
   * A mark at the point the speech has been sent up to now; resolves with
   * `{name, playedMs}` when the listeners have heard up to it, or null if it was dropped.
   * For a mark at an exact place, put `{mark: name}` in the source instead.
   */
  mark(name) {
    return new Promise((resolve, reject) => {
      if (this.result || this._finishing) {
        this.call._sendMark(String(name)).then(({ played }) => played.then(resolve), reject);
        return;
      }
      this._pendingMarks.push({ name: String(name), resolve, reject });
    });
  }

  /**
   * Stop this speech now (and everything said after it); the server drops
   * what it has not played. Resolves with how much was played and heard.
   * @returns {Promise<import('./index.js').SpeechResult>}
   */
  async interrupt() {
    if (this.result) return this.result;
    await this.call.clear();
    return this._done;
  }

  _abort() {
    this._aborted = true;
    if (this._wakeAbort) this._wakeAbort();
  }

  _settle(result) {
    if (this.result) return;
    this.result = result;
    this.call._speeches.delete(this);
    for (const mark of this._pendingMarks) mark.resolve(null);
    this._pendingMarks = [];
    this._abort();
    this._settleWith.resolve(result);
  }

  /** The server dropped our queue (`cleared`, or `interrupted` by a human). */
  _cut(raw, by) {
    if (this.result) return;
    const start = this.startMs ?? this.call._positionMs();
    const toSpeech = (ms) => clamp(ms - start, 0, this.sentMs);
    const endDropped = (raw.marks_dropped ?? []).includes(this._endMark);
    if (this._endSent && !endDropped && raw.played_ms >= start + this.sentMs) return; // it had played out
    if (by !== null) this.interruptedBy = by;
    this._settle({
      completed: false,
      interrupted: true,
      by,
      playedMs: this.startMs === null ? 0 : toSpeech(raw.played_ms),
      durationMs: this.sentMs,
      heard: (raw.heard ?? []).map((h) => ({ participantId: h.participant_id, heardMs: this.startMs === null ? 0 : toSpeech(h.heard_ms) })),
    });
  }

  /** Send the marks asked for so far: at a frame boundary, before the partial frame the framer holds. */
  async _flushMarks() {
    while (this._pendingMarks.length) {
      const mark = this._pendingMarks.shift();
      try {
        const { played } = await this.call._sendMark(mark.name);
        played.then(mark.resolve);
      } catch (err) {
        mark.reject(err);
      }
    }
  }

  async _run() {
    if (this._aborted || this.result) {
      this._settle(this.result ?? { completed: false, interrupted: true, by: null, playedMs: 0, durationMs: 0, heard: [] });
      return;
    }
    const call = this.call;
    const opus = call.encoding === 'opus';
    let rate = this.sampleRate;
    let resampler = null;
    if (opus ? !OPUS_RATES.has(rate) : rate !== call.sendSampleRate) {
      const target = opus ? RTP_CLOCK : call.sendSampleRate;
      resampler = new Resampler(rate, target);
      rate = target;
    }
    const framer = new Framer(rate / 50);
    this._epoch = call._clearsSent;
    this.startMs = call._positionMs();
    this._sending = true;
    const sendFrames = async (frames) => {
      // The speech's first packet carries the marker bit (a new talk spurt): after a
      // barge-in the server drops the interrupted speech's tail until it.
      await call._sendFrames(frames, rate, this.sentMs === 0);
      this.sentMs += frames.length * FRAME_MS;
    };
    const aborted = new Promise((resolve) => {
      this._wakeAbort = resolve;
    });
    let iterator = null;
    try {
      const source = this._source;
      if (isChunk(source)) {
        iterator = [source][Symbol.iterator]();
      } else if (source && typeof source[Symbol.asyncIterator] === 'function') {
        iterator = source[Symbol.asyncIterator]();
      } else if (source && typeof source[Symbol.iterator] === 'function') {
        iterator = source[Symbol.iterator]();
      } else {
        throw new TypeError('say() takes PCM or an (async) iterable of PCM chunks and {mark} objects');
      }
      for (;;) {
        if (this._aborted) break;
        const step = await Promise.race([Promise.resolve(iterator.next()), aborted.then(() => null)]);
        if (step === null || this._aborted || step.done) break;
        const item = step.value;
        await this._flushMarks();
        if (item && typeof item === 'object' && !isChunk(item) && typeof item.mark === 'string') {
          await call._sendMark(item.mark);
          continue;
        }
        let samples = toInt16(item);
        if (resampler) samples = resampler.push(samples);
        const frames = framer.push(samples);
        // Send in slices so an interrupt stops a long chunk within a second.
        for (let start = 0; start < frames.length && !this._aborted; start += FRAMES_PER_MESSAGE) {
          await call._paceAhead(aborted);
          if (this._aborted) break;
          await sendFrames(frames.slice(start, start + FRAMES_PER_MESSAGE));
        }
      }
      if (!this._aborted) {
        this._finishing = true; // marks asked for from now on go straight out
        const tail = framer.flush();
        if (tail) await sendFrames([tail]);
        await this._flushMarks();
        const { played: end } = await call._sendMark(this._endMark);
        this._endSent = true;
        this._sending = false;
        end.then((event) => {
          if (event) this._settle({ completed: true, interrupted: false, by: null, playedMs: this.sentMs, durationMs: this.sentMs, heard: [] });
        });
      }
    } catch (err) {
      this._sending = false;
      if (!this.result) {
        this.result = { completed: false, interrupted: false, by: null, playedMs: 0, durationMs: this.sentMs, heard: [], error: err };
        call._speeches.delete(this);
        this._settleWith.reject(err);
      }
    } finally {
      this._sending = false;
      if (this._aborted && iterator && typeof iterator.return === 'function') {
        try {
          await iterator.return();
        } catch {
          // the source's own clean-up failed; the speech is over anyway
        }
      }
    }
  }
}
