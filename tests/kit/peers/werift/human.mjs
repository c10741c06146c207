// A werift human for BotCall's interoperability tests (installed by
// scripts/setup.sh test; imports nothing from BotCall).
//
// Joins a room the way the PWA does (hello, join, one offer holding every
// candidate: BotCall takes no trickle), sends a tone from its "microphone" as
// Opus (opusscript: libopus in WebAssembly) and writes what it hears, decoded,
// as 48 kHz mono int16 to --record. The same line protocol as aiortc_human.py:
// out {"event":"connected"|"renegotiated"|"recorded"|"error", ...};
// in {"cmd":"same_offer"|"restart_ice"|"quit"}.
import fs from "node:fs";
import readline from "node:readline";
import { parseArgs } from "node:util";
import OpusScript from "opusscript";
import { MediaStreamTrack, RTCPeerConnection, RtpHeader, RtpPacket } from "werift";
import WebSocket from "ws";

const { values: args } = parseArgs({
  options: {
    "signal-url": { type: "string" },
    invite: { type: "string" },
    tone: { type: "string", default: "550" },
    record: { type: "string" },
    name: { type: "string", default: "werift" },
  },
});

const RATE = 48000;
const FRAME = 960;
const emit = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");

const ws = new WebSocket(args["signal-url"]);
const inbox = [];
let waiter = null;
ws.on("message", (data) => {
  inbox.push(JSON.parse(data.toString()));
  if (waiter) { const w = waiter; waiter = null; w(); }
});
async function next(type) {
  for (;;) {
    const index = inbox.findIndex((m) => m.type === type || m.type === "error");
    if (index >= 0) {
      const [message] = inbox.splice(index, 1);
      if (message.type === "error") throw new Error(`server error: ${JSON.stringify(message)}`);
      return message;
    }
    await new Promise((resolve) => { waiter = resolve; });
  }
}

// Loopback is among the server's announced addresses; werift leaves it out by default.
const pc = new RTCPeerConnection({ iceAdditionalHostAddresses: ["127.0.0.1"] });
const microphone = new MediaStreamTrack({ kind: "audio" });
pc.addTransceiver(microphone, { direction: "sendrecv" });

const out = fs.openSync(args.record, "w");
let recorded = 0;
const decoder = new OpusScript(RATE, 1, OpusScript.Application.VOIP);
pc.onTrack.subscribe((track) => {
  track.onReceiveRtp.subscribe((rtp) => {
    try {
      const pcm = decoder.decode(rtp.payload);
      fs.writeSync(out, pcm);
      recorded += pcm.length / 2;
    } catch (error) {
      emit({ event: "error", message: `decode: ${error}` });
    }
  });
});

async function offer() {
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => {
      const sub = pc.iceGatheringStateChange.subscribe((state) => {
        if (state === "complete") { sub.unSubscribe(); resolve(); }
      });
    });
  }
  ws.send(JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }));
  const answer = await next("answer");
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
}

async function main() {
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject); });
  ws.send(JSON.stringify({ type: "hello", invite: args.invite }));
  ws.send(JSON.stringify({ type: "join", display_name: args.name }));
  await next("joined");
  const connected = new Promise((resolve) => {
    pc.connectionStateChange.subscribe((state) => {
      if (state === "connected") resolve();
      if (state === "failed") emit({ event: "error", message: "connection failed" });
    });
  });
  await offer();
  await connected;
  emit({ event: "connected" });

  // The microphone: a tone in 20 ms Opus frames, paced in real time.
  const encoder = new OpusScript(RATE, 1, OpusScript.Application.VOIP);
  const frequency = Number(args.tone);
  const start = performance.now();
  let sent = 0;
  let sequenceNumber = 1;
  const tick = () => {
    while (sent * 20 <= performance.now() - start) {
      const pcm = Buffer.alloc(FRAME * 2);
      for (let i = 0; i < FRAME; i++) {
        const t = (sent * FRAME + i) / RATE;
        pcm.writeInt16LE(Math.round(0.4 * 32767 * Math.sin(2 * Math.PI * frequency * t)), i * 2);
      }
      const header = new RtpHeader({ payloadType: 111, sequenceNumber, timestamp: sent * FRAME, marker: sent === 0 });
      microphone.writeRtp(new RtpPacket(header, encoder.encode(pcm, FRAME)));
      sequenceNumber = (sequenceNumber + 1) & 0xffff;
      sent += 1;
    }
  };
  const pacing = setInterval(tick, 5);
  const reporting = setInterval(() => emit({ event: "recorded", samples: recorded }), 500);

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const { cmd } = JSON.parse(line);
    if (cmd === "quit") break;
    if (cmd === "restart_ice") pc.restartIce();
    await offer();
    emit({ event: "renegotiated", samples: recorded });
  }
  clearInterval(pacing);
  clearInterval(reporting);
  await pc.close();
  fs.closeSync(out);
  process.exit(0);
}

main().catch((error) => {
  emit({ event: "error", message: String(error && error.stack || error) });
  process.exit(1);
});
