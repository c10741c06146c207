// Compiled (never run) by test/types.test.mjs: the hand-written types must
// describe the API as the README uses it, under `strict`.
import { connect, BotCallHttpError, type AudioFrame, type CallEvent, type SpeechResult } from 'botcall-sdk';

async function main(): Promise<void> {
  const call = await connect('http://127.0.0.1:8080', 'room', 'token', { encoding: 'pcm16', sampleRate: 16000, sendSampleRate: 24000 });
  async function* tts(): AsyncGenerator<Int16Array | { mark: string }> {
    yield new Int16Array(2400);
    yield { mark: 'half' };
    yield new Int16Array(2400);
  }
  const speech = call.say(tts(), { sampleRate: 24000 });
  const mark = await speech.mark('now');
  const played: number = mark === null ? 0 : mark.playedMs;
  const result: SpeechResult = await speech.interrupt();
  const heard: number[] = result.heard.map((h) => h.heardMs + played);
  for await (const frame of call.audio()) {
    const f: AudioFrame = frame;
    const samples: Int16Array = f.pcm;
    console.log(f.participantId, f.sampleRate, f.streamMs, f.wallTime, samples.length, heard);
    break;
  }
  for await (const event of call.events()) {
    const e: CallEvent = event;
    if (e.type === 'speech_started') console.log(e.participantId, e.streamMs);
    if (e.type === 'interrupted') console.log(e.by, e.playedMs, e.heard[0]?.heardMs);
    if (e.type === 'chat') console.log(e.text, e.seq);
    if (e.type === 'events_lost') console.log(e.firstSeq, e.lastSeq, e.count);
    break;
  }
  await call.chat('hi');
  await call.mute();
  const reason: string = await call.closed;
  await call.leave();
  console.log(reason);
}

main().catch((err: unknown) => {
  if (err instanceof BotCallHttpError) console.error(err.status, err.code);
});
