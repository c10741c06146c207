// Wire formats the SDK speaks: RTP (RFC 3550) with the RFC 6464 audio level in
// an RFC 8285 one-byte header extension, and the JWT payload a token carries.
// Pure functions, no I/O. Functions that read network bytes end in `Untrusted`
// and throw only `BadPacketError`.

export const RTP_VERSION = 2;
/** Opus, as the relay numbers it (docs/protocol.md "Audio over the WebSocket"). */
export const OPUS_PAYLOAD_TYPE = 111;
/** pcm16 frames the relay decoded (96) or synthesised for a lost packet (97). */
export const PCM16_PAYLOAD_TYPE = 96;
export const PCM16_CONCEALED_PAYLOAD_TYPE = 97;
/** The extension id bots put their audio level at (docs/protocol.md "Speech detection"). */
export const BOT_AUDIO_LEVEL_ID = 1;
/** Below this level a frame is never flagged as voice (the relay's gate, dBFS). */
const VOICE_GATE_DBFS = -55;

export class BadPacketError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BadPacketError';
  }
}

/**
 * An RTP packet: 12-byte header, then the one-byte-header extension carrying
 * the audio level (RFC 8285 §4.2: profile 0xBEDE, one 32-bit word), then the payload.
 * `marker` sets the marker bit: the first packet of a talk spurt (RFC 3551 §4.1).
 * @param {{payloadType:number, seq:number, timestamp:number, ssrc:number, payload:Uint8Array, level?:number|null, voice?:boolean, marker?:boolean}} p
 * @returns {Buffer}
 */
export function buildRtp({ payloadType, seq, timestamp, ssrc, payload, level = null, voice = false, marker = false }) {
  const extension = level === null ? 0 : 8;
  const packet = Buffer.allocUnsafe(12 + extension + payload.length);
  packet[0] = 0x80 | (extension ? 0x10 : 0);
  packet[1] = (payloadType & 0x7f) | (marker ? 0x80 : 0);
  packet.writeUInt16BE(seq & 0xffff, 2);
  packet.writeUInt32BE(timestamp >>> 0, 4);
  packet.writeUInt32BE(ssrc >>> 0, 8);
  if (extension) {
    packet.writeUInt16BE(0xbede, 12);
    packet.writeUInt16BE(1, 14);
    packet[16] = (BOT_AUDIO_LEVEL_ID << 4) | 0; // length field is len - 1
    packet[17] = (voice ? 0x80 : 0) | (level & 0x7f); // RFC 6464 §3: V flag, then -dBov
    packet[18] = 0;
    packet[19] = 0;
  }
  packet.set(payload, 12 + extension);
  return packet;
}

/**
 * Parse an RTP packet from the server (RFC 3550 §5.1, extensions skipped per §5.3.1).
 * @param {Uint8Array} data
 * @returns {{payloadType:number, seq:number, timestamp:number, ssrc:number, payload:Buffer}}
 * @throws {BadPacketError} for anything that is not a well-formed RTP packet.
 */
export function parseRtpUntrusted(data) {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length < 12) throw new BadPacketError(`RTP packet of ${buf.length} bytes`);
  if (buf[0] >> 6 !== RTP_VERSION) throw new BadPacketError('not RTP version 2');
  const csrcCount = buf[0] & 0x0f;
  let offset = 12 + 4 * csrcCount;
  if (buf[0] & 0x10) {
    if (buf.length < offset + 4) throw new BadPacketError('truncated header extension');
    offset += 4 + 4 * buf.readUInt16BE(offset + 2);
  }
  let end = buf.length;
  if (buf[0] & 0x20) {
    const padding = buf[buf.length - 1];
    if (padding === 0) throw new BadPacketError('padding of zero bytes');
    end -= padding;
  }
  if (offset > end) throw new BadPacketError('header longer than the packet');
  return {
    payloadType: buf[1] & 0x7f,
    seq: buf.readUInt16BE(2),
    timestamp: buf.readUInt32BE(4),
    ssrc: buf.readUInt32BE(8),
    payload: buf.subarray(offset, end),
  };
}

/**
 * The RFC 6464 level of a frame (RMS in -dBov, 0..127) and whether it is loud
 * enough to call voice (an energy gate, the cheap half of the Python SDK's flag).
 * @param {Int16Array} pcm
 * @returns {{level:number, voice:boolean}}
 */
export function audioLevel(pcm) {
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
  const rms = pcm.length ? Math.sqrt(sum / pcm.length) / 32768 : 0;
  const dbfs = rms > 0 ? 20 * Math.log10(rms) : -127;
  const level = Math.min(127, Math.max(0, Math.round(-dbfs)));
  return { level, voice: dbfs > VOICE_GATE_DBFS };
}

/**
 * The claims of a JWT, read without verifying it (it is the bot's own token).
 * @param {string} token
 * @returns {Record<string, unknown>}
 */
export function jwtClaims(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) throw new TypeError('token is not a JWT (three dot-separated parts)');
  try {
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) throw new Error('not an object');
    return claims;
  } catch (err) {
    throw new TypeError(`token payload is not a JSON object: ${err.message}`);
  }
}
