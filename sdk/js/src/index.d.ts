// Types for botcall-sdk (hand-written; the package is plain ESM JavaScript).

export const MAX_QUEUED_FRAMES: number;
export const MAX_QUEUED_EVENTS: number;
export const DEFAULT_MAX_AHEAD_MS: number;
export const DEFAULT_PCM16_MAX_AHEAD_MS: number;

export type Pcm = Int16Array | Float32Array | Uint8Array | ArrayBuffer;
/** A place in a streamed source where a `mark` event should fire. */
export interface MarkItem {
  mark: string;
}
export type SpeechSource = Pcm | Iterable<Pcm | MarkItem> | AsyncIterable<Pcm | MarkItem>;

export interface ConnectOptions {
  /** "opus" (the SDK encodes and decodes with libopus in wasm) or "pcm16" (the server does). Default "opus". */
  encoding?: 'opus' | 'pcm16';
  /** The rate of `audio()` frames: Opus 8000/12000/16000/24000/48000, pcm16 8000/16000/24000/48000. Default 48000. */
  sampleRate?: number;
  /** pcm16 only: the rate sent to the server (default `sampleRate`); `say()` resamples other rates to it. */
  sendSampleRate?: number;
  /** "separate" (a stream per speaker, default) or "mixed" (one mix-minus stream, participantId "mix"). */
  receive?: 'separate' | 'mixed';
  /** Send and receive chat. Default true. */
  textChat?: boolean;
  /** Defaults to the token's `sub`. */
  agentId?: string;
  /** How far ahead of the playout `say()` sends (Opus 60000, pcm16 2000 by default; the server takes 120000). */
  maxAheadMs?: number;
  /** Reopen a dropped WebSocket within the server's grace window. Default true. */
  reconnect?: boolean;
  /** Cancels the join; a call that was half made leaves at once. */
  signal?: AbortSignal;
}

export interface Participant {
  participantId: string;
  kind: 'bot' | 'human';
  displayName: string;
  transport: string;
  muted: boolean;
  ssrc: number | null;
  capabilities: Record<string, boolean>;
  agentId?: string;
  controller?: string;
  issuer?: string;
  scopes?: string[];
}

export interface Heard {
  participantId: string;
  heardMs: number;
}

/** An event from the server; `seq` is its number in the session (docs/protocol.md "Resuming"). */
export type ServerEvent = { seq?: number } & (
  | { type: 'participant_joined'; participant: Participant }
  | { type: 'participant_left'; participantId: string; reason: string }
  | { type: 'muted'; participantId: string; muted: boolean }
  | { type: 'speech_started'; participantId: string; streamMs: number }
  | { type: 'speech_stopped'; participantId: string; streamMs: number; durationMs: number }
  | { type: 'speaking'; participantId: string; speaking: boolean }
  | { type: 'chat'; participantId: string; text: string }
  | { type: 'room_closed'; reason: string }
  | { type: 'pong'; nonce: string }
  | { type: 'error'; code: string; message: string }
  | { type: 'mark'; name: string; playedMs: number }
  | { type: 'cleared'; playedMs: number; droppedMs: number; marksDropped: string[]; heard: Heard[] }
  | { type: 'interrupted'; by: string; playedMs: number; droppedMs: number; marksDropped: string[]; heard: Heard[] }
  | { type: 'stream_started'; participantId: string; ssrc: number; rtpTimestamp: number }
);

export type CallEvent =
  | ServerEvent
  /**
   * Events `firstSeq`..`lastSeq` will never arrive: after a drop, the server no
   * longer held them (it keeps 256 per session); or, on a live socket, the
   * numbering skipped (the server dropped events we read too slowly).
   */
  | { type: 'events_lost'; firstSeq: number; lastSeq: number; count: number }
  /** SDK events: the WebSocket dropped, and was reopened (held events replayed, duplicates dropped). */
  | { type: 'disconnected'; code: number; reason: string }
  | { type: 'reconnected' };

export interface AudioFrame {
  /** The speaker ("mix" for the mixed stream; null if not yet known). */
  participantId: string | null;
  ssrc: number;
  sampleRate: number;
  /** 20 ms of mono samples. */
  pcm: Int16Array;
  /** Position in the speaker's stream, ms since their first packet (the clock of speech_started/stopped). */
  streamMs: number;
  /** When the frame arrived, ms since the Unix epoch. */
  wallTime: number;
  /** pcm16: the server synthesised it for a lost packet. */
  concealed: boolean;
  seq: number;
}

export interface SpeechResult {
  /** Played to the end. */
  completed: boolean;
  /** Stopped by `interrupt()`/`clear()` (by null) or by a human barging in (by their participant id). */
  interrupted: boolean;
  by: string | null;
  /** How much of this speech the listeners were sent, ms from its start. */
  playedMs: number;
  /** How much of it had been sent to the server. */
  durationMs: number;
  /** How far each listener's ear got, ms from the speech's start (their reported playout delay subtracted). */
  heard: Heard[];
  /** Set when the call closed before the speech ended. */
  reason?: 'closed';
  error?: unknown;
}

export class BotCallHttpError extends Error {
  status: number;
  /** The server's machine code, e.g. "room_not_found". */
  code: string;
}

export class CallError extends Error {
  code: number | string | null;
}

export class BadPacketError extends Error {}

export class Speech {
  readonly call: Call;
  readonly id: number;
  readonly sampleRate: number;
  startMs: number | null;
  sentMs: number;
  interruptedBy: string | null;
  result: SpeechResult | null;
  /** Resolves when the speech was played to the end, interrupted, or the call closed. */
  done(): Promise<SpeechResult>;
  /** A mark where sending has got to; resolves when heard, or null if dropped. */
  mark(name: string): Promise<{ name: string; playedMs: number } | null>;
  /** Stop this speech (and what was said after it); resolves with what was played and heard. */
  interrupt(): Promise<SpeechResult>;
}

export class Call {
  readonly sessionId: string;
  readonly participantId: string;
  readonly roomId: string;
  readonly ssrc: number;
  readonly encoding: 'opus' | 'pcm16';
  readonly sampleRate: number;
  readonly sendSampleRate: number;
  /** The server's join answer. */
  readonly join: Record<string, unknown>;
  readonly media: Record<string, unknown>;
  readonly participants: Map<string, Participant>;
  closeReason: string | null;
  readonly counters: {
    framesSent: number; framesReceived: number; malformed: number; decodeErrors: number; reconnects: number;
    /** Events the server replayed after a reconnect; duplicates dropped; events lost for good (events_lost). */
    replayed: number; duplicates: number; eventsLost: number;
  };
  /** Resolves with the reason when the call ends. */
  readonly closed: Promise<string>;
  /** Every speaker's 20 ms frames, until the call ends (one reader; a slow one loses the oldest). */
  audio(): AsyncIterableIterator<AudioFrame>;
  /** The room's events, until the call ends (one reader; a slow one loses the oldest). */
  events(): AsyncIterableIterator<CallEvent>;
  /** Speak: sent ahead, played out by the server; speeches queue in order. */
  say(source: SpeechSource, options?: { sampleRate?: number }): Speech;
  /** Drop everything queued; resolves with the `cleared` event. */
  clear(): Promise<Extract<CallEvent, { type: 'cleared' }> | null>;
  mute(muted?: boolean): Promise<void>;
  unmute(): Promise<void>;
  chat(text: string): Promise<void>;
  /** Ask for a `pong` event with this nonce: everything sent before it has been handled. */
  ping(nonce?: string): Promise<void>;
  playoutDelay(ms: number): Promise<void>;
  /** Leave at once (the room hears `participant_left`); safe to call twice. */
  leave(): Promise<void>;
}

/** Join a room as a bot over the WebSocket transport. */
export function connect(server: string, roomId: string, token: string, options?: ConnectOptions): Promise<Call>;

/** One JSON HTTP request (e.g. `POST /v1/rooms/create` with a bearer token). */
export function requestJson(
  method: string,
  url: string,
  options?: { body?: unknown; bearer?: string; signal?: AbortSignal; timeoutMs?: number },
): Promise<any>;
