// The Node SDK's own cost in a two-way call, against the real server with the
// Python CLI bot talking back:
//   - CPU (user + system) of this process per second of call, while it says
//     a streamed tone and reads every frame the other bot sends;
//   - latency from `say()` to the first packet handed to the socket (the SDK's
//     share of mouth-to-ear: framing, encoding, RTP).
// Usage: node bench/overhead.mjs [seconds]   (prints one JSON line per encoding)

import { join } from 'node:path';

import { connect } from '../src/index.js';
import { pythonBot, startServer, tempDir, toneAfterSilence, tone, writeWav } from '../test/kit.mjs';

const seconds = Number(process.argv[2] ?? 10);

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

async function measure(server, dir, encoding) {
  const token = await server.token(`bench-${encoding}`);
  const room = await server.createRoom(token);
  const call = await connect(server.url, room.room_id, token, { encoding, sampleRate: encoding === 'opus' ? 48_000 : 16_000 });
  const bot = pythonBot(server, room.room_id, await server.token(`bench-py-${encoding}`), { play: join(dir, 'talk.wav') });
  try {
    for await (const event of call.events()) if (event.type === 'participant_joined') break;
    // Two-way: we stream a tone in 100 ms chunks as a TTS would (sent ahead, the
    // server paces it) while reading every frame of the other bot's.
    let frames = 0;
    const reading = (async () => {
      for await (const frame of call.audio()) frames += frame.pcm.length > 0 ? 1 : 0;
    })();
    const rate = 24_000;
    const pcm = tone(440, seconds, rate);
    async function* stream() {
      for (let start = 0; start < pcm.length; start += rate / 10) {
        yield pcm.subarray(start, start + rate / 10);
        await new Promise((r) => setTimeout(r, 100)); // a real-time TTS
      }
    }
    const cpuStart = process.cpuUsage();
    const wallStart = performance.now();
    const speech = call.say(stream(), { sampleRate: rate });
    await speech.done();
    const wall = (performance.now() - wallStart) / 1000;
    const cpu = process.cpuUsage(cpuStart);
    const cpuMsPerSecond = (cpu.user + cpu.system) / 1000 / wall;

    // say() -> first packet on the socket, one 20 ms frame at a time.
    const latencies = [];
    const ws = call._ws;
    const send = ws.send.bind(ws);
    let startedAt = 0;
    let firstAt = 0;
    ws.send = (data, ...rest) => {
      if (!firstAt && typeof data !== 'string') firstAt = performance.now();
      return send(data, ...rest);
    };
    const frame = tone(440, 0.02, rate);
    for (let i = 0; i < 200; i++) {
      firstAt = 0;
      startedAt = performance.now();
      const s = call.say(frame, { sampleRate: rate });
      while (!firstAt) await new Promise((r) => setImmediate(r));
      latencies.push(firstAt - startedAt);
      await s.done();
    }
    ws.send = send;
    return {
      encoding,
      call_seconds: Number(wall.toFixed(2)),
      cpu_ms_per_call_second: Number(cpuMsPerSecond.toFixed(2)),
      frames_received: frames,
      say_to_first_packet_ms: { p50: Number(percentile(latencies, 0.5).toFixed(3)), p99: Number(percentile(latencies, 0.99).toFixed(3)) },
    };
  } finally {
    await call.leave();
    await bot.stop();
    await server.deleteRoom(token, room.room_id).catch(() => {});
  }
}

const server = await startServer();
const dir = tempDir();
writeWav(join(dir, 'talk.wav'), toneAfterSilence(660, seconds + 30, 48_000), 48_000);
try {
  for (const encoding of ['opus', 'pcm16']) console.log(JSON.stringify(await measure(server, dir, encoding)));
} finally {
  await server.stop();
}
