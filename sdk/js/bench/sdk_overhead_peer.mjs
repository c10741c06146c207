// The Node SDK's side of `python -m bench.sdk_overhead` (run from the repository
// root; it starts this script, on the same core as its own bots, against the same
// server): the same two-bot call and the same say → wire measurement as the
// Python SDK's, so the figures sit in one table.
//
//   node sdk/js/bench/sdk_overhead_peer.mjs SERVER ROOM TOKEN_A TOKEN_B ENCODING WINDOW_S SAMPLES
//
// Prints JSON lines: {"ready"}, {"idle_cpu_ms_per_s"}, {"call_cpu_ms_per_s",
// "frames_heard"}, then {"latency": "armed"} and waits for a line on stdin (the
// bench's packet socket is listening), then one {"t0"} per sample: the wall-clock
// time (ms, the kernel's packet timestamps' clock) of the say() call. The bench
// finds the first binary WebSocket frame on the wire after each.

import { createInterface } from 'node:readline';

import { connect } from '../src/index.js';

const [server, room, tokenA, tokenB, encoding, windowArg, samplesArg] = process.argv.slice(2);
const windowS = Number(windowArg);
const samples = Number(samplesArg);
const TTS_RATE = 24_000; // a typical text-to-speech engine's output rate
const SETTLE_MS = 1000; // after the speech starts, before the window (the send-ahead burst)
const SAMPLE_INTERVAL_MS = 100; // 10 say calls a second (each sends a mark: the server takes 20 JSON messages a second)

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const print = (object) => process.stdout.write(`${JSON.stringify(object)}\n`);
/** Wall-clock ms with sub-ms resolution (CLOCK_REALTIME at start, then the monotonic clock). */
const wallMs = () => performance.timeOrigin + performance.now();

function tone(frequency, seconds, rate) {
  const samples = new Int16Array(Math.round(seconds * rate));
  for (let i = 0; i < samples.length; i++) samples[i] = Math.round(0.3 * 32767 * Math.sin((2 * Math.PI * frequency * i) / rate));
  return samples;
}

/** A tone as a real-time TTS makes it: 100 ms chunks, one every 100 ms. */
async function* ttsStream(frequency, seconds) {
  const pcm = tone(frequency, seconds, TTS_RATE);
  const step = TTS_RATE / 10;
  const start = performance.now();
  for (let index = 0, offset = 0; offset < pcm.length; index++, offset += step) {
    yield pcm.subarray(offset, offset + step);
    const due = start + (index + 1) * 100;
    await sleep(Math.max(0, due - performance.now()));
  }
}

async function cpuPerSecond(seconds) {
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  await sleep(seconds * 1000);
  const cpu = process.cpuUsage(cpu0);
  return (cpu.user + cpu.system) / 1000 / ((performance.now() - wall0) / 1000);
}

const options = { encoding, sampleRate: encoding === 'pcm16' ? 16_000 : 48_000 };
const alto = await connect(server, room, tokenA, options);
const bass = await connect(server, room, tokenB, options);
const heard = [0, 0];
for (const [index, call, other] of [[0, alto, bass], [1, bass, alto]]) {
  (async () => {
    for await (const frame of call.audio()) {
      if (frame.participantId !== other.participantId || frame.concealed) continue;
      let peak = 0;
      for (const sample of frame.pcm) peak = Math.max(peak, Math.abs(sample));
      if (peak > 1000) heard[index] += 1;
    }
  })();
  (async () => {
    for await (const _event of call.events());
  })();
}
while (!alto.participants.has(bass.participantId) || !bass.participants.has(alto.participantId)) await sleep(20);
print({ ready: true });

await sleep(SETTLE_MS);
print({ idle_cpu_ms_per_s: await cpuPerSecond(windowS) });

const first = [alto.say(ttsStream(440, windowS + 2), { sampleRate: TTS_RATE }), bass.say(ttsStream(660, windowS + 2), { sampleRate: TTS_RATE })];
await sleep(SETTLE_MS);
heard[0] = heard[1] = 0;
const busy = await cpuPerSecond(windowS);
print({ call_cpu_ms_per_s: busy, frames_heard: heard[0] + heard[1] });
for (const speech of first) await speech.done();

print({ latency: 'armed' });
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
await lines.next();
const frame = tone(550, 0.02, 48_000);
for (let i = 0; i < samples; i++) {
  const started = performance.now();
  const t0 = wallMs();
  const speech = alto.say(frame, { sampleRate: 48_000 });
  await speech.done(); // played out: the next say is not queued behind it
  print({ t0 }); // after: printing must not delay the send being measured
  await sleep(Math.max(0, started + SAMPLE_INTERVAL_MS - performance.now()));
}
await alto.leave();
await bass.leave();
print({ done: true });
process.exit(0);
