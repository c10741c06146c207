// Events the server produced while our WebSocket was down are replayed on the
// reconnect, once and in order (docs/protocol.md "Resuming"), against the real
// server behind a proxy that takes this bot's network down: another bot joins,
// chats and leaves and our mark fires meanwhile. A drop longer than the server's
// log gives `events_lost`. Waits are on events; timeouts are safety nets.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { connect } from '../src/index.js';
import { HoldingProxy, loudSeconds, startServer, tone } from './kit.mjs';

// The server keeps 8 events per session here (256 by default): the second drop overflows it.
const LOG = 8;
let server;
let proxy;
let proxyUrl;

before(async () => {
  proxy = new HoldingProxy();
  proxyUrl = `http://127.0.0.1:${await proxy.listen()}`;
  server = await startServer({ publicUrl: proxyUrl, env: { BOTCALL_WS_REPLAY_MAX_EVENTS: String(LOG) } });
  proxy.targetPort = server.port;
});

after(async () => {
  await server?.stop();
  await proxy?.close();
});

/** Read `call.events()` into `into` in the background; `until(predicate)` waits for a matching one. */
function collect(call) {
  const into = [];
  let wake = () => {};
  (async () => {
    for await (const event of call.events()) {
      into.push(event);
      wake();
    }
    wake();
  })();
  into.until = async (predicate, what) => {
    for (;;) {
      const found = into.find(predicate);
      if (found) return found;
      if (call.closeReason) throw new Error(`the call ended (${call.closeReason}) before ${what}`);
      await new Promise((resolve) => {
        wake = resolve;
      });
    }
  };
  return into;
}

/** Another bot joins, chats and leaves (straight to the server; its socket passes the proxy unheld). */
async function visit(roomId, texts) {
  const visitor = await connect(server.url, roomId, await server.token(`visitor-${texts.length}`));
  for (const text of texts) await visitor.chat(text);
  const id = visitor.participantId;
  await visitor.leave();
  return id;
}

/** Events the server sent (not the SDK's own disconnected/reconnected). */
const fromServer = (events) => events.filter((e) => e.type !== 'disconnected' && e.type !== 'reconnected');

test('events during a drop arrive after the reconnect, once and in order; a longer drop gives events_lost', { timeout: 120_000 }, async () => {
  const token = await server.token('node-far');
  const room = await server.createRoom(token);
  // A watcher in the room (its socket is never held) tells when things happened.
  const watcher = await connect(server.url, room.room_id, await server.token('node-watcher'));
  const watched = collect(watcher);
  const far = await connect(proxyUrl, room.room_id, token);
  const events = collect(far);
  try {
    // 3 s of tone, our mark, 1 s more: the mark fires while our socket is down.
    let allSent;
    const sent = new Promise((resolve) => {
      allSent = resolve;
    });
    async function* speech() {
      yield tone(500, 3, 48_000);
      yield { mark: 'during' };
      yield tone(500, 1, 48_000);
      allSent();
    }
    const said = far.say(speech(), { sampleRate: 48_000 });
    await sent;
    await far.ping('before');
    await events.until((e) => e.type === 'pong' && e.nonce === 'before', 'the first pong');
    const before = events.length;
    proxy.goDown(`/v1/stream/${far.sessionId}`);

    const visitor = await visit(room.room_id, ['one', 'two', 'three']);
    await watched.until((e) => e.type === 'participant_left' && e.participantId === visitor, 'the visitor left');
    // The watcher has heard 3.5 s of our speech: the playout is past our mark.
    let loud = 0;
    for await (const frame of watcher.audio()) {
      if (frame.participantId === far.participantId && loudSeconds(frame.pcm, frame.sampleRate) > 0) loud += 1;
      if (loud >= 175) break;
    }
    assert.equal(far.counters.reconnects, 0, 'still down');
    proxy.comeBack();
    const done = await said.done();
    await events.until((e) => e.type === 'reconnected', 'the reconnect');
    await far.ping('after');
    const pongAfter = await events.until((e) => e.type === 'pong' && e.nonce === 'after', 'the pong after the drop');

    const afterDrop = fromServer(events.slice(before));
    const seqs = fromServer(events).filter((e) => Number.isInteger(e.seq)).map((e) => e.seq);
    assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b), 'each event once, in order');
    assert.ok(!afterDrop.some((e) => e.type === 'events_lost'), 'nothing lost');
    const aboutVisitor = afterDrop
      .filter((e) => e.participantId === visitor || e.participant?.participantId === visitor)
      .map((e) => [e.type, e.text ?? null]);
    assert.deepEqual(aboutVisitor, [['participant_joined', null], ['chat', 'one'], ['chat', 'two'], ['chat', 'three'], ['participant_left', null]]);
    assert.deepEqual(afterDrop.filter((e) => e.type === 'mark').map((e) => e.name), ['during']);
    assert.equal(afterDrop.at(-1), pongAfter, 'the replay came before live events');
    assert.ok(far.counters.replayed >= 6, JSON.stringify(far.counters));
    assert.equal(far.counters.duplicates, 0);
    assert.equal(done.completed, true, JSON.stringify(done));
    assert.ok(!far.participants.has(visitor));

    // A drop longer than the log: joined, ten chats, left = 12 events, 8 held.
    const second = events.length;
    proxy.goDown(`/v1/stream/${far.sessionId}`);
    const texts = Array.from({ length: 10 }, (_, i) => `c${i + 1}`);
    const visitor2 = await visit(room.room_id, texts);
    await watched.until((e) => e.type === 'participant_left' && e.participantId === visitor2, 'the second visitor left');
    proxy.comeBack();
    await events.until((e) => e.type === 'participant_left' && e.participantId === visitor2, 'the replayed leave');
    const b = pongAfter.seq;
    const replay = fromServer(events.slice(second));
    assert.deepEqual(replay[0], { type: 'events_lost', firstSeq: b + 1, lastSeq: b + 4, count: 4 });
    assert.deepEqual(
      replay.slice(1).map((e) => [e.type, e.text ?? null, e.seq]),
      [...texts.slice(3).map((text, i) => ['chat', text, b + 5 + i]), ['participant_left', null, b + 12]],
    );
    assert.equal(far.counters.eventsLost, 4);
  } finally {
    await far.leave();
    await watcher.leave();
    await server.deleteRoom(token, room.room_id).catch(() => {});
  }
});
