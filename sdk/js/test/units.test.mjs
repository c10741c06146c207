// The SDK's pure parts: RTP codec, 20 ms framing, resampling.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { BadPacketError, buildRtp, parseRtpUntrusted, audioLevel, jwtClaims } from '../src/wire.js';
import { Framer, Resampler, toInt16 } from '../src/audio.js';

test('RTP round-trips, with and without the audio level extension', () => {
  const payload = Buffer.from([1, 2, 3, 4, 5]);
  for (const level of [null, 30]) {
    const packet = buildRtp({ payloadType: 111, seq: 65535, timestamp: 0xfffffff0, ssrc: 0xdeadbeef, payload, level, voice: true });
    const parsed = parseRtpUntrusted(packet);
    assert.deepEqual({ ...parsed, payload: [...parsed.payload] }, { payloadType: 111, seq: 65535, timestamp: 0xfffffff0, ssrc: 0xdeadbeef, payload: [1, 2, 3, 4, 5] });
    if (level !== null) assert.deepEqual([...packet.subarray(12, 20)], [0xbe, 0xde, 0, 1, 0x10, 0x80 | 30, 0, 0]);
  }
});

test('the marker bit marks a talk spurt and leaves the payload type alone', () => {
  const payload = Buffer.from([1, 2, 3]);
  const marked = buildRtp({ payloadType: 111, seq: 1, timestamp: 2, ssrc: 3, payload, level: 20, marker: true });
  const plain = buildRtp({ payloadType: 111, seq: 1, timestamp: 2, ssrc: 3, payload, level: 20 });
  assert.equal(marked[1], 0x80 | 111);
  assert.equal(plain[1], 111);
  assert.equal(parseRtpUntrusted(marked).payloadType, 111);
});

test('untrusted RTP either parses or raises BadPacketError, whole or truncated', () => {
  const good = buildRtp({ payloadType: 96, seq: 1, timestamp: 2, ssrc: 3, payload: Buffer.alloc(40), level: 10 });
  const inputs = [];
  for (let n = 0; n <= good.length; n++) inputs.push(good.subarray(0, n));
  for (let i = 0; i < 3000; i++) {
    const bytes = randomBytes(i % 60);
    if (bytes.length) bytes[0] = (bytes[0] & 0x3f) | 0x80; // mostly version 2, so parsing goes deep
    inputs.push(bytes);
  }
  for (const data of inputs) {
    try {
      const packet = parseRtpUntrusted(data);
      assert.ok(packet.payload.length <= data.length);
    } catch (err) {
      assert.ok(err instanceof BadPacketError, `${err} for ${data.toString('hex')}`);
    }
  }
});

test('the framer inserts no silence between chunks: 5 s in 104 ms chunks at 24 kHz is 250 frames', () => {
  const framer = new Framer(480);
  const total = 5 * 24_000;
  const source = Int16Array.from({ length: total }, (_, i) => (i % 1000) + 1);
  const frames = [];
  for (let start = 0; start < total; start += 2496) frames.push(...framer.push(source.subarray(start, start + 2496)).map((f) => Int16Array.from(f)));
  assert.equal(framer.flush(), null);
  assert.equal(frames.length, 250);
  const joined = Int16Array.from(frames.flatMap((f) => [...f]));
  assert.deepEqual(joined, source);
  framer.push(new Int16Array(100).fill(7));
  const tail = framer.flush();
  assert.equal(tail.length, 480);
  assert.equal(tail[99], 7);
  assert.equal(tail[100], 0);
});

test('the resampler gives the same output fed whole or in odd chunks, at the right length', () => {
  const input = Int16Array.from({ length: 44_100 }, (_, i) => Math.round(10_000 * Math.sin((2 * Math.PI * 440 * i) / 44_100)));
  const whole = new Resampler(44_100, 24_000).push(input);
  const chunked = new Resampler(44_100, 24_000);
  const parts = [];
  for (let start = 0; start < input.length; start += 4410 + 7) parts.push(...chunked.push(input.subarray(start, start + 4417)));
  assert.deepEqual(Int16Array.from(parts), whole);
  assert.ok(Math.abs(whole.length - 24_000) <= 1, `${whole.length} samples`);
});

test('toInt16 takes int16, float and little-endian bytes; refuses half samples', () => {
  assert.deepEqual([...toInt16(Buffer.from([0x01, 0x00, 0xff, 0xff]))], [1, -1]);
  assert.deepEqual([...toInt16(Float32Array.from([1, -1, 0]))], [32767, -32767, 0]);
  assert.throws(() => toInt16(Buffer.from([1, 2, 3])), RangeError);
  assert.throws(() => toInt16('pcm'), TypeError);
});

test('audio level: full-scale tone near 3 dBov, silence 127 and not voice', () => {
  const loud = Int16Array.from({ length: 960 }, (_, i) => Math.round(32767 * Math.sin((2 * Math.PI * 1000 * i) / 48_000)));
  assert.deepEqual(audioLevel(loud), { level: 3, voice: true });
  assert.deepEqual(audioLevel(new Int16Array(960)), { level: 127, voice: false });
});

test('jwtClaims reads the payload and refuses what is not a JWT', () => {
  const token = ['e30', Buffer.from(JSON.stringify({ sub: 'orion#8f3a' })).toString('base64url'), 'sig'].join('.');
  assert.equal(jwtClaims(token).sub, 'orion#8f3a');
  assert.throws(() => jwtClaims('nope'), TypeError);
  assert.throws(() => jwtClaims('a.bm90IGpzb24.c'), TypeError);
});
