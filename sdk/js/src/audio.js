// PCM helpers: 20 ms framing across chunk boundaries and a streaming resampler.

/** Sample rates libopus encodes from and decodes to directly (RFC 6716 §2). */
export const OPUS_RATES = new Set([8000, 12000, 16000, 24000, 48000]);
/** Rates the relay's pcm16 mode sends and receives (docs/protocol.md `POST /v1/join`). */
export const PCM16_RATES = new Set([8000, 16000, 24000, 48000]);

/**
 * Int16 samples of a chunk: an Int16Array as is, a Buffer/Uint8Array read as
 * little-endian int16 (an odd trailing byte is an error), a Float32Array scaled.
 * @param {Int16Array|Float32Array|Uint8Array|ArrayBuffer} chunk
 * @returns {Int16Array}
 */
export function toInt16(chunk) {
  if (chunk instanceof Int16Array) return chunk;
  if (chunk instanceof Float32Array) {
    const out = new Int16Array(chunk.length);
    for (let i = 0; i < chunk.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(chunk[i] * 32767)));
    return out;
  }
  const bytes = chunk instanceof ArrayBuffer ? new Uint8Array(chunk) : chunk;
  if (!(bytes instanceof Uint8Array)) throw new TypeError('audio chunks are Int16Array, Float32Array, Buffer or Uint8Array');
  if (bytes.byteLength % 2) throw new RangeError('pcm16 bytes must be a whole number of samples (even length)');
  if (bytes.byteOffset % 2 === 0) return new Int16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  return new Int16Array(bytes.slice().buffer);
}

/**
 * Cuts a stream of chunks into frames of `frameSamples`, carrying the
 * remainder into the next chunk: no silence is inserted between chunks.
 */
export class Framer {
  constructor(frameSamples) {
    this.frameSamples = frameSamples;
    this._rest = new Int16Array(0);
  }

  /** @param {Int16Array} samples @returns {Int16Array[]} whole frames */
  push(samples) {
    let all = samples;
    if (this._rest.length) {
      all = new Int16Array(this._rest.length + samples.length);
      all.set(this._rest);
      all.set(samples, this._rest.length);
    }
    const frames = [];
    let offset = 0;
    for (; offset + this.frameSamples <= all.length; offset += this.frameSamples) {
      frames.push(all.subarray(offset, offset + this.frameSamples));
    }
    this._rest = all.slice(offset);
    return frames;
  }

  /** The last partial frame padded with silence, or null if there is none. */
  flush() {
    if (!this._rest.length) return null;
    const frame = new Int16Array(this.frameSamples);
    frame.set(this._rest);
    this._rest = new Int16Array(0);
    return frame;
  }
}

/**
 * Linear-interpolation resampler with state across chunks, for source rates
 * neither libopus nor the relay takes (22050, 44100, ...). Speech-grade: it
 * does not low-pass before decimating, so send at an Opus rate (8/12/16/24/48 kHz)
 * when the source allows.
 */
export class Resampler {
  constructor(fromRate, toRate) {
    if (!(Number.isInteger(fromRate) && Number.isInteger(toRate) && fromRate > 0 && toRate > 0)) {
      throw new RangeError('sample rates must be positive integers');
    }
    this.fromRate = fromRate;
    this.toRate = toRate;
    // Exact integer positions (output n sits at input n * from / to), so the
    // output does not depend on how the input was cut into chunks.
    this._emitted = 0; // output samples so far
    this._consumed = 0; // input samples before the current chunk
    this._last = 0; // the previous chunk's last sample (position -1)
  }

  /** @param {Int16Array} input @returns {Int16Array} */
  push(input) {
    if (!input.length) return new Int16Array(0);
    const out = [];
    const last = input.length - 1;
    for (;;) {
      // Position of the next output in this chunk, as whole + frac / toRate.
      const numerator = this._emitted * this.fromRate - this._consumed * this.toRate;
      const i = Math.floor(numerator / this.toRate);
      if (i > last) break;
      const frac = (numerator - i * this.toRate) / this.toRate;
      const a = i < 0 ? this._last : input[i];
      const b = i < last ? input[i + 1] : a;
      if (i === last && frac > 0) break; // needs the next chunk's first sample
      out.push(Math.round(a + (b - a) * frac));
      this._emitted += 1;
    }
    this._consumed += input.length;
    this._last = input[last];
    return Int16Array.from(out);
  }
}
