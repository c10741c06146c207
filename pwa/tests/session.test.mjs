// The call's state machine (pwa/session.js) without a browser: `node --test pwa/tests/`.
//
// Every step runs on a deeply frozen state, so a reducer that modified its
// input would throw here (ES modules are strict mode).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  CONNECT_TIMEOUT_MS,
  ICE_TIMEOUT_MS,
  iceServerList,
  PING_INTERVAL_MS,
  MAX_PLAYOUT_DELAY_MS,
  PROBLEMS,
  RETRY_DELAYS_MS,
  STATS_INTERVAL_MS,
  formatDuration,
  initialState,
  inviteTarget,
  parseLocation,
  playoutDelayMs,
  playoutSnapshot,
  reduce,
} from '../session.js';

const INVITE = 'secret-invite';
const ME = { participant_id: 'p-me', kind: 'human', display_name: 'Ada', capabilities: { text_chat: true } };
const BOT = { participant_id: 'p-bot', kind: 'bot', agent_id: 'orion#8f3a', controller: 'gopi' };
const BOB = { participant_id: 'p-bob', kind: 'human', display_name: 'Bob' };

function deepFreeze(value) {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze(value[key]);
  }
  return value;
}

/**
 * A call driven input by input; `effects` holds the last step's effects.
 *
 * `now` is a fake clock: tests set it, or `wait` moves it on and fires the
 * timers the steps started (as app.js would) when they fall due.
 */
class Call {
  constructor(options = {}) {
    this.state = deepFreeze(initialState({ roomId: 'room-1', invite: INVITE, ...options }));
    this.effects = [];
    this.now = 1000;
    this.timers = new Map(); // name -> {due, every}
  }

  step(input) {
    const before = this.state;
    const { state, effects } = reduce(before, deepFreeze({ now: this.now, ...input }));
    assert.notEqual(state, before, 'a step returns a new state object');
    this.state = deepFreeze(state);
    this.effects = effects;
    for (const e of effects) {
      if (e.type === 'start_timer') this.timers.set(e.name, { due: this.now + e.ms, every: null });
      else if (e.type === 'start_interval') this.timers.set(e.name, { due: this.now + e.ms, every: e.ms });
      else if (e.type === 'cancel_timer') this.timers.delete(e.name);
    }
    return effects;
  }

  /** Let MS of silence pass: fire the timers that fall due, in order; returns the names fired. */
  wait(ms) {
    const end = this.now + ms;
    const fired = [];
    for (;;) {
      const next = [...this.timers].sort((a, b) => a[1].due - b[1].due)[0];
      if (next === undefined || next[1].due > end) break;
      const [name, timer] = next;
      this.now = timer.due;
      if (timer.every === null) this.timers.delete(name);
      else this.timers.set(name, { due: timer.due + timer.every, every: timer.every });
      this.step({ type: 'timer', name });
      fired.push(name);
    }
    this.now = end;
    return fired;
  }

  /** The server's message on the current socket. */
  server(message) {
    return this.step({ type: 'message', socket: this.state.socketId, message });
  }

  sent() {
    return this.effects.filter((e) => e.type === 'send').map((e) => e.message);
  }

  of(type) {
    return this.effects.filter((e) => e.type === type);
  }

  announced() {
    return this.of('announce').map((e) => e.text);
  }

  /** Start, open the socket and receive the lobby. */
  toLobby(participants = [BOT]) {
    this.step({ type: 'start' });
    this.step({ type: 'socket_open', socket: this.state.socketId });
    this.server({ type: 'lobby', participants, max_human_participants: 3 });
    return this;
  }

  /** Join from the lobby up to a connected peer with the microphone on. */
  toConnected() {
    this.toLobby();
    this.step({ type: 'join', displayName: '  Ada ' });
    this.server({ type: 'joined', participant_id: ME.participant_id, you: ME, participants: [BOT], resume: 'resume-1' });
    this.step({ type: 'offer_ready', peer: this.state.peerId, sdp: 'v=0 offer' });
    this.server({ type: 'answer', sdp: 'v=0 answer' });
    this.step({ type: 'mic_ready', attempt: this.state.attempt });
    this.step({ type: 'peer_state', peer: this.state.peerId, state: 'connected' });
    return this;
  }
}

describe('lobby, join, offer and answer', () => {
  test('start opens the socket with a connect timeout and says hello with the invite', () => {
    const call = new Call();
    call.step({ type: 'start' });
    assert.equal(call.state.ui, 'loading');
    assert.equal(call.state.loadingText, 'Opening the call…');
    const [open] = call.of('open_socket');
    assert.deepEqual(open, { type: 'open_socket', socket: call.state.socketId, roomId: 'room-1' });
    assert.deepEqual(call.of('start_timer'), [{ type: 'start_timer', name: 'connect', ms: CONNECT_TIMEOUT_MS }]);
    assert.deepEqual(call.sent(), [], 'nothing is sent before the socket opens');

    call.step({ type: 'socket_open', socket: call.state.socketId - 1 });
    assert.deepEqual(call.sent(), [], 'a replaced socket is ignored');
    call.step({ type: 'socket_open', socket: call.state.socketId });
    assert.deepEqual(call.sent(), [{ type: 'hello', invite: INVITE }]);
  });

  test('the lobby lists the people, starts the keepalive and warms up the audio', () => {
    const call = new Call().toLobby([BOT, BOB]);
    assert.equal(call.state.ui, 'lobby');
    assert.deepEqual(
      call.state.participants.map((p) => [p.participant_id, p.speaking]),
      [
        ['p-bot', false],
        ['p-bob', false],
      ],
    );
    assert.equal(call.state.lobbyMax, 3);
    assert.deepEqual(call.of('cancel_timer'), [{ type: 'cancel_timer', name: 'connect' }]);
    assert.deepEqual(call.of('start_interval'), [{ type: 'start_interval', name: 'ping', ms: PING_INTERVAL_MS }]);
    assert.equal(call.of('prepare_audio').length, 1);
    assert.deepEqual(call.of('focus'), [{ type: 'focus', screen: 'lobby' }]);
    assert.deepEqual(call.announced(), ['Ready to join']);

    call.step({ type: 'timer', name: 'ping' });
    assert.deepEqual(call.sent(), [{ type: 'ping' }]);
    call.server({ type: 'pong' });
    assert.deepEqual(call.effects, []);
  });

  test('the offer asks for the downstream tracks the lobby gave, bounded to 1..8 (group calls)', () => {
    for (const [given, offered] of [[3, 3], [99, 8], [0, 1], ['3', 1], [undefined, 1]]) {
      const call = new Call();
      call.step({ type: 'start' });
      call.step({ type: 'socket_open', socket: call.state.socketId });
      call.server({ type: 'lobby', participants: [BOT], max_human_participants: 3, receive_tracks: given });
      call.step({ type: 'join', displayName: 'Ada' });
      assert.deepEqual(call.of('start_peer'), [{ type: 'start_peer', peer: call.state.peerId, iceServers: [], receiveTracks: offered }], String(given));
    }
  });
  test('join sends the name, builds the offer at once and asks for the microphone', () => {
    const call = new Call().toLobby();
    call.now = 5000;
    const effects = call.step({ type: 'join', displayName: '  Ada ' });
    assert.equal(call.state.ui, 'joining');
    assert.equal(call.state.wantCall, true);
    assert.deepEqual(call.sent(), [{ type: 'join', display_name: 'Ada' }]);
    assert.deepEqual(
      effects.map((e) => e.type).filter((t) => ['send', 'start_peer', 'unlock_audio', 'open_mic'].includes(t)),
      ['send', 'start_peer', 'unlock_audio', 'open_mic'],
    );
    assert.deepEqual(call.of('start_peer'), [{ type: 'start_peer', peer: call.state.peerId, iceServers: [], receiveTracks: 1 }]);
    assert.deepEqual(call.of('open_mic'), [{ type: 'open_mic', attempt: 1 }]);
    assert.deepEqual(call.state.marks, { click: 5000 });

    // A second click while joining does nothing.
    assert.deepEqual(call.step({ type: 'join', displayName: 'Ada' }), []);
  });

  test('a first visit (permission "prompt") joins once the microphone is allowed', () => {
    const call = new Call().toLobby();
    call.step({ type: 'mic_permission', state: 'prompt' });
    call.now = 5000;
    call.step({ type: 'join', displayName: 'Ada' });
    assert.equal(call.state.ui, 'joining');
    assert.equal(call.state.awaitingMic, true);
    assert.deepEqual(call.sent(), []); // no join while the prompt is open
    assert.deepEqual(call.of('start_peer'), []);
    assert.deepEqual(call.of('open_mic'), [{ type: 'open_mic', attempt: 1 }]);
    assert.deepEqual(call.announced(), ['Allow the microphone to join the call']);
    // The lobby again (a socket that came back) does not join either.
    call.server({ type: 'lobby', participants: [BOT], max_human_participants: 3 });
    assert.deepEqual(call.sent(), []);
    assert.equal(call.state.ui, 'joining');
    // Allowed: the microphone is used, then the join and the peer follow.
    call.now = 6500;
    const effects = call.step({ type: 'mic_ready', attempt: 1 });
    assert.deepEqual(
      effects.map((e) => e.type).filter((t) => ['use_mic', 'send', 'start_peer'].includes(t)),
      ['use_mic', 'send', 'start_peer'],
    );
    assert.deepEqual(call.sent(), [{ type: 'join', display_name: 'Ada' }]);
    assert.equal(call.state.awaitingMic, false);
    assert.equal(call.state.micPermission, 'granted'); // a rejoin does not wait again
    assert.deepEqual(call.state.marks, { click: 5000, mic: 6500 });
  });

  test('a first visit whose microphone is refused never joins', () => {
    const call = new Call().toLobby();
    call.step({ type: 'mic_permission', state: 'prompt' });
    call.step({ type: 'join', displayName: 'Ada' });
    call.step({ type: 'mic_failed', attempt: 1, name: 'NotAllowedError', message: 'denied' });
    assert.equal(call.state.problem.code, 'mic_denied');
    assert.equal(call.state.awaitingMic, false);
    assert.deepEqual(call.sent().filter((m) => m.type === 'join'), []);
  });

  test('allowed before ("granted"), or unknown, the join does not wait for the microphone', () => {
    for (const state of ['granted', 'denied', 'bogus']) {
      const call = new Call().toLobby();
      call.step({ type: 'mic_permission', state });
      call.step({ type: 'join', displayName: 'Ada' });
      assert.equal(call.state.awaitingMic, false, state);
      assert.deepEqual(call.sent(), [{ type: 'join', display_name: 'Ada' }], state);
    }
  });

  test('joined sends the offer, the answer is applied, the peer connects', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    const peer = call.state.peerId;
    call.server({ type: 'joined', participant_id: 'p-me', you: ME, participants: [BOT], resume: 'resume-1' });
    assert.equal(call.state.participantId, 'p-me');
    assert.equal(call.state.resume, 'resume-1');
    assert.equal(call.state.canChat, true);
    assert.deepEqual(call.of('send_offer'), [{ type: 'send_offer', peer }]);
    assert.equal(call.state.ui, 'connecting');
    assert.deepEqual(call.announced(), ['Connecting']);
    assert.deepEqual(
      call.state.participants.map((p) => p.participant_id),
      ['p-me', 'p-bot'],
    );

    call.step({ type: 'offer_ready', peer: peer + 1, sdp: 'stale' });
    assert.deepEqual(call.sent(), [], "another peer's offer is not sent");
    call.step({ type: 'offer_ready', peer, sdp: 'v=0 offer' });
    assert.deepEqual(call.sent(), [{ type: 'offer', sdp: 'v=0 offer' }]);

    call.server({ type: 'answer', sdp: 'v=0 answer' });
    assert.deepEqual(call.effects, [{ type: 'apply_answer', peer, sdp: 'v=0 answer' }]);
    call.server({ type: 'answer', sdp: 42 });
    assert.deepEqual(call.effects, [], 'an answer without SDP text is ignored');

    call.now = 7000;
    call.step({ type: 'peer_state', peer, state: 'connecting' });
    assert.equal(call.state.ui, 'connecting');
    call.step({ type: 'peer_state', peer, state: 'connected' });
    assert.equal(call.state.ui, 'connected');
    assert.equal(call.state.connectedAt, 7000);
    assert.equal(call.state.marks.connected, 7000);
    assert.deepEqual(call.announced(), ['Connected']);
  });

  test('a renegotiation mid-call: its offer goes out, its answer is applied, the call stays connected', () => {
    const call = new Call().toConnected();
    const peer = call.state.peerId;
    call.now = 2000;
    call.step({ type: 'answer_applying', peer });
    const joinAnswer = call.state.marks.answer;
    call.now = 9000;
    call.step({ type: 'offer_ready', peer, sdp: 'v=0 offer again' });
    assert.deepEqual(call.sent(), [{ type: 'offer', sdp: 'v=0 offer again' }]);
    call.server({ type: 'answer', sdp: 'v=0 answer again' });
    assert.deepEqual(call.effects, [{ type: 'apply_answer', peer, sdp: 'v=0 answer again' }]);
    call.step({ type: 'answer_applying', peer });
    assert.equal(call.state.marks.answer, joinAnswer, "the join's answer mark is kept");
    assert.equal(call.state.ui, 'connected');
  });

  test('a join without chat rights hides the chat form', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: '' });
    call.server({ type: 'joined', participant_id: 'p-me', you: { ...ME, capabilities: {} }, participants: [] });
    assert.equal(call.state.canChat, false);
  });

  test('joined is ignored unless a join was sent', () => {
    const call = new Call().toLobby();
    call.server({ type: 'joined', participant_id: 'p-me', you: ME });
    assert.equal(call.state.participantId, null);
    assert.deepEqual(call.effects, []);
  });

  test('the microphone is attached when it arrives; a late one is dropped', () => {
    const call = new Call().toConnected();
    assert.equal(call.state.marks.mic, 1000);
    call.step({ type: 'mic_ready', attempt: call.state.attempt - 1 });
    assert.deepEqual(call.effects, [{ type: 'drop_mic', attempt: call.state.attempt - 1 }]);
    call.step({ type: 'mic_ready', attempt: call.state.attempt });
    assert.deepEqual(call.of('use_mic'), [{ type: 'use_mic', attempt: call.state.attempt }]);
    assert.deepEqual(call.of('mic_enabled'), [{ type: 'mic_enabled', enabled: true }]);
  });

  test('a refused microphone leaves, explains and retries the join', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    call.step({ type: 'mic_failed', attempt: 1, name: 'NotAllowedError', message: 'Permission denied' });
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'leave' }]);
    assert.equal(call.state.ui, 'error');
    assert.equal(call.state.problem.code, 'mic_denied');
    assert.equal(call.state.problem.title, 'Microphone blocked');
    assert.equal(call.state.problem.detail, PROBLEMS.mic_denied.detail, 'the browser message is not shown');
    assert.ok(call.state.problem.steps.includes('Set Microphone to Allow.'));
    assert.equal(call.state.problem.retry, true);
    assert.ok(call.of('stop_peer').length && call.of('stop_mic').length && call.of('close_socket').length);
    assert.deepEqual(call.announced(), ['Microphone blocked']);

    call.step({ type: 'retry', displayName: 'Ada' });
    assert.equal(call.state.problem, null);
    assert.equal(call.state.ui, 'joining');
    assert.deepEqual(call.of('open_mic'), [{ type: 'open_mic', attempt: 2 }]);
    assert.equal(call.of('open_socket').length, 1, 'the lobby socket was closed: a new one opens');
  });

  test('an unknown microphone failure shows its message', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    call.step({ type: 'mic_failed', attempt: 1, name: 'TypeError', message: 'boom' });
    assert.equal(call.state.problem.code, 'failed');
    assert.equal(call.state.problem.detail, 'The call could not start. (boom)');
  });

  test('an insecure page or a browser without WebRTC cannot join', () => {
    const insecure = new Call({ secure: false }).toLobby();
    insecure.step({ type: 'join', displayName: '' });
    assert.equal(insecure.state.problem.code, 'insecure');
    assert.deepEqual(insecure.sent(), []);
    const old = new Call({ webrtc: false }).toLobby();
    old.step({ type: 'join', displayName: '' });
    assert.equal(old.state.problem.title, "This browser can't make calls");
  });
});

describe('mute', () => {
  test('the button toggles the track, tells the server and lights my entry', () => {
    const call = new Call().toConnected();
    call.step({ type: 'mute_clicked' });
    assert.equal(call.state.muted, true);
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'mute', value: true }]);
    assert.deepEqual(call.of('mic_enabled'), [{ type: 'mic_enabled', enabled: false }]);
    assert.deepEqual(call.announced(), ['Microphone muted']);
    assert.equal(call.state.participants.find((p) => p.participant_id === 'p-me').muted, true);

    call.step({ type: 'mute_clicked' });
    assert.equal(call.state.muted, false);
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'mute', value: false }]);
    assert.deepEqual(call.announced(), ['Microphone on']);
    assert.equal(call.state.participants.find((p) => p.participant_id === 'p-me').muted, false);
  });

  test('the server muting me turns the microphone off without echoing back', () => {
    const call = new Call().toConnected();
    call.server({ type: 'muted', participant_id: 'p-me', muted: true });
    assert.equal(call.state.muted, true);
    assert.deepEqual(call.of('mic_enabled'), [{ type: 'mic_enabled', enabled: false }]);
    assert.deepEqual(call.sent(), []);
  });

  test('a new join starts unmuted', () => {
    const call = new Call().toConnected();
    call.step({ type: 'mute_clicked' });
    call.step({ type: 'hang_up' });
    call.step({ type: 'join', displayName: 'Ada' });
    assert.equal(call.state.muted, false);
  });
});

describe('participants and their lights', () => {
  test('joins and leaves update the list and are announced', () => {
    const call = new Call().toLobby([BOT]);
    call.server({ type: 'participant_joined', participant: BOB });
    assert.deepEqual(
      call.state.participants.map((p) => p.participant_id),
      ['p-bot', 'p-bob'],
    );
    assert.deepEqual(call.announced(), ['Bob joined']);

    call.server({ type: 'participant_joined', participant: { display_name: 'no id' } });
    assert.equal(call.state.participants.length, 2);
    assert.deepEqual(call.effects, []);

    call.server({ type: 'participant_left', participant_id: 'p-bot' });
    assert.deepEqual(
      call.state.participants.map((p) => p.participant_id),
      ['p-bob'],
    );
    assert.deepEqual(call.announced(), ['orion#8f3a left']);
    call.server({ type: 'participant_left', participant_id: 'p-nobody' });
    assert.deepEqual(call.effects, []);
  });

  test('speaking and muted events light one entry; unknown ids are ignored', () => {
    const call = new Call().toLobby([BOT, BOB]);
    call.server({ type: 'speaking', participant_id: 'p-bot', speaking: true });
    call.server({ type: 'muted', participant_id: 'p-bob', muted: true });
    call.server({ type: 'speaking', participant_id: 'p-ghost', speaking: true });
    const flags = Object.fromEntries(call.state.participants.map((p) => [p.participant_id, [p.speaking, p.muted === true]]));
    assert.deepEqual(flags, { 'p-bot': [true, false], 'p-bob': [false, true] });
    assert.equal(call.state.muted, false, "someone else's mute is not mine");
  });

  test('speech_started and speech_stopped drive the speaking light', () => {
    const call = new Call().toConnected();
    call.server({ type: 'speech_started', participant_id: 'p-bot', stream_ms: 1200 });
    assert.equal(call.state.participants.find((p) => p.participant_id === 'p-bot').speaking, true);
    call.server({ type: 'speech_started', participant_id: 'p-me', stream_ms: 40 });
    assert.deepEqual(
      call.state.participants.map((p) => [p.participant_id, p.speaking]),
      [
        ['p-me', true],
        ['p-bot', true],
      ],
    );
    call.server({ type: 'speech_stopped', participant_id: 'p-bot', stream_ms: 2600, duration_ms: 1400 });
    assert.deepEqual(
      call.state.participants.map((p) => p.speaking),
      [true, false],
    );
    // The old alias still works, and both kinds can be mixed (the same detector drives them).
    call.server({ type: 'speaking', participant_id: 'p-bot', speaking: true });
    call.server({ type: 'speech_stopped', participant_id: 'p-me', stream_ms: 900, duration_ms: 860 });
    assert.deepEqual(
      call.state.participants.map((p) => p.speaking),
      [false, true],
    );
    call.server({ type: 'speech_started', participant_id: 'p-ghost', stream_ms: 0 });
    assert.deepEqual(call.effects, [], 'an unknown participant is ignored');
    assert.equal(call.state.participants.length, 2);
  });

  test('speech events that arrive in the lobby light the list before joining', () => {
    const call = new Call().toLobby([BOT, BOB]);
    call.server({ type: 'speech_started', participant_id: 'p-bob', stream_ms: 0 });
    assert.deepEqual(
      call.state.participants.map((p) => p.speaking),
      [false, true],
    );
  });

  test('events the page does not use change nothing and throw nothing', () => {
    const call = new Call().toConnected();
    call.server({ type: 'speech_started', participant_id: 'p-bot', stream_ms: 10 });
    const before = call.state;
    const ignored = [
      { type: 'stream_started', participant_id: 'p-bot', ssrc: 1234, rtp_timestamp: 0 },
      { type: 'mark', name: 'end-of-turn', played_ms: 2000 },
      { type: 'cleared', played_ms: 2000, dropped_ms: 400, marks_dropped: [], heard: [] },
      { type: 'interrupted', participant_id: 'p-bot', by: 'p-me', played_ms: 2000 },
      { type: 'brand_new_event', anything: { nested: [1, 2] } },
      // Malformed speech events: no id, an id that is not a string, a number.
      { type: 'speech_started' },
      { type: 'speech_stopped', participant_id: { id: 'p-bot' } },
      { type: 'speech_stopped', participant_id: 42, stream_ms: 'later' },
    ];
    for (const message of ignored) {
      assert.deepEqual(call.server(message), [], message.type);
    }
    assert.deepEqual(call.state.participants, before.participants);
    assert.equal(call.state.ui, 'connected');
    assert.equal(call.state.participants.find((p) => p.participant_id === 'p-bot').speaking, true);
  });

  test('a new list keeps who is speaking unless it says otherwise', () => {
    const call = new Call().toLobby([BOT, BOB]);
    call.server({ type: 'speaking', participant_id: 'p-bot', speaking: true });
    call.server({ type: 'speaking', participant_id: 'p-bob', speaking: true });
    call.server({ type: 'lobby', participants: [BOT, { ...BOB, speaking: false }] });
    assert.deepEqual(
      call.state.participants.map((p) => p.speaking),
      [true, false],
    );
  });

  test('being removed from the call ends it', () => {
    const call = new Call().toConnected();
    call.server({ type: 'participant_left', participant_id: 'p-me' });
    assert.equal(call.state.ui, 'ended');
    assert.equal(call.state.ended.detail, 'You left the call.');
  });
});

describe('chat', () => {
  test('lines name their sender, count as unread while closed, and are sent from the form', () => {
    const call = new Call().toConnected();
    call.server({ type: 'chat', participant_id: 'p-bot', text: 'hi <b>there</b>' });
    assert.deepEqual(
      call.state.chat.map(({ who, body }) => [who, body]),
      [['orion#8f3a', 'hi <b>there</b>']],
    );
    assert.equal(call.state.unread, 1);
    call.step({ type: 'chat_toggled', open: true });
    assert.equal(call.state.unread, 0);

    call.step({ type: 'chat_submit', text: '  hello  ' });
    assert.deepEqual(call.sent(), [{ type: 'chat', text: 'hello' }]);
    assert.equal(call.of('clear_chat_input').length, 1);
    assert.deepEqual(call.state.chat.at(-1).who, 'You');
    assert.equal(call.state.unread, 0, 'the chat is open');

    call.server({ type: 'error', code: 'rate_limited', message: 'Slow down' });
    assert.deepEqual(call.announced(), ['Slow down']);
    assert.equal(call.state.chat.at(-1).note, 'Slow down');
  });

  test('the log keeps the last 200 lines', () => {
    const call = new Call().toConnected();
    for (let i = 0; i < 205; i++) call.server({ type: 'chat', participant_id: 'p-bot', text: `line ${i}` });
    assert.equal(call.state.chat.length, 200);
    assert.equal(call.state.chat[0].body, 'line 5');
    assert.equal(call.state.unread, 205);
  });
});

describe('closed rooms and errors', () => {
  test('room_closed in the lobby shows the problem; during a call it ends the call', () => {
    const lobby = new Call().toLobby();
    lobby.server({ type: 'room_closed' });
    assert.equal(lobby.state.ui, 'error');
    assert.equal(lobby.state.problem.code, 'room_closed');
    assert.equal(lobby.state.problem.title, 'This call has ended');
    assert.equal(lobby.state.problem.retry, false);
    assert.deepEqual(lobby.announced(), ['This call has ended']);
    // The server's close that follows does not change the message.
    lobby.step({ type: 'socket_closed', socket: lobby.state.socketId, code: 4410 });
    assert.deepEqual(lobby.effects.filter((e) => e.type !== 'cancel_timer'), []);

    const call = new Call().toConnected();
    call.server({ type: 'room_closed' });
    assert.equal(call.state.ui, 'ended');
    assert.equal(call.state.ended.detail, 'The call was closed.');
  });

  for (const [reported, code, title] of [
    ['invite_invalid', 'invite_invalid', 'This invite link is not valid'],
    ['room_not_found', 'room_not_found', "We can't find this call"],
    ['room_full', 'room_full', 'This call is full'],
    ['room_expired', 'room_closed', 'This call has ended'],
  ]) {
    test(`error ${reported} shows "${title}"`, () => {
      const call = new Call().toLobby();
      call.server({ type: 'error', code: reported, message: 'ignored' });
      assert.equal(call.state.problem.code, code);
      assert.equal(call.state.problem.title, title);
      assert.equal(call.state.problem.detail, PROBLEMS[code].detail);
      assert.equal(call.state.ws, null, 'the socket is closed');
    });
  }

  for (const [closeCode, problem] of [
    [4401, 'invite_invalid'],
    [4404, 'room_not_found'],
    [4409, 'room_full'],
    [4410, 'room_closed'],
  ]) {
    test(`close code ${closeCode} shows ${problem}`, () => {
      const call = new Call();
      call.step({ type: 'start' });
      call.step({ type: 'socket_closed', socket: call.state.socketId, code: closeCode });
      assert.equal(call.state.ui, 'error');
      assert.equal(call.state.problem.code, problem);
      assert.equal(call.state.problem.title, PROBLEMS[problem].title);
    });
  }

  for (const [closeCode, detail] of [
    [4408, 'Your time on this call ran out.'],
    [4411, 'You joined this call from another tab or device.'],
    [1000, 'The call ended.'],
  ]) {
    test(`close code ${closeCode} during a call ends it: "${detail}"`, () => {
      const call = new Call().toConnected();
      call.step({ type: 'socket_closed', socket: call.state.socketId, code: closeCode });
      assert.equal(call.state.ui, 'ended');
      assert.equal(call.state.ended.detail, detail);
      assert.deepEqual(call.of('start_timer'), [], 'no reconnect');
    });
  }

  test('bad_offer ends the attempt with the server message; other errors are only announced', () => {
    const call = new Call().toConnected();
    call.server({ type: 'error', code: 'not_ours', message: 'Something odd' });
    assert.equal(call.state.ui, 'connected');
    assert.deepEqual(call.announced(), ['Something odd']);
    assert.equal(call.state.chat.length, 0);

    call.server({ type: 'error', code: 'bad_offer', message: 'no audio' });
    assert.equal(call.state.ui, 'error');
    assert.equal(call.state.problem.code, 'bad_offer');
    assert.equal(call.state.problem.title, "Your browser's call setup isn't supported");
    assert.match(call.state.problem.detail, /^BotCall could not use the audio connection .* \(no audio\)$/);
    assert.equal(call.state.problem.retry, true);
    assert.equal(call.state.wantCall, false);
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'leave' }], 'the server does not hold our place');
    assert.equal(call.of('close_socket').length, 1);
  });

  test('a missing invite and the home page', () => {
    const missing = new Call({ invite: null });
    missing.step({ type: 'start' });
    assert.equal(missing.state.problem.code, 'invite_missing');
    assert.deepEqual(missing.of('open_socket'), []);
    const home = new Call({ roomId: null, invite: null });
    home.step({ type: 'start' });
    assert.equal(home.state.ui, 'home');
    assert.deepEqual(home.of('focus'), [{ type: 'focus', screen: 'home' }]);
  });
});

describe('reconnecting after a dropped socket', () => {
  test('a drop during a call resumes our session and keeps a connected media path', () => {
    const call = new Call().toConnected();
    const peer = call.state.peerId;
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1012 });
    assert.equal(call.state.ui, 'reconnecting');
    assert.deepEqual(call.of('start_timer'), [{ type: 'start_timer', name: 'retry', ms: RETRY_DELAYS_MS[0] }]);
    assert.deepEqual(call.of('stop_peer'), [], 'the media path is kept');

    call.step({ type: 'timer', name: 'retry' });
    assert.equal(call.of('open_socket').length, 1);
    call.step({ type: 'socket_open', socket: call.state.socketId });
    assert.deepEqual(call.sent(), [{ type: 'hello', invite: INVITE, resume: 'resume-1' }]);
    call.server({ type: 'lobby', participants: [ME, BOT], resumed: true });
    assert.deepEqual(call.sent(), [], 'no new join: the server resumed us');
    call.server({ type: 'joined', participant_id: 'p-me', you: ME, participants: [BOT], media_connected: true, resume: 'resume-2' });
    assert.equal(call.state.ui, 'connected');
    assert.equal(call.state.peerId, peer);
    assert.deepEqual(call.of('start_peer'), []);
    assert.deepEqual(call.of('send_offer'), []);
    assert.equal(call.state.retries, 0);
    assert.equal(call.state.resume, 'resume-2');
  });

  test('a resumed session whose media broke renegotiates with a new peer', () => {
    const call = new Call().toConnected();
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'disconnected' });
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    call.step({ type: 'timer', name: 'retry' });
    call.step({ type: 'socket_open', socket: call.state.socketId });
    call.server({ type: 'lobby', participants: [], resumed: true });
    const old = call.state.peerId;
    call.server({ type: 'joined', participant_id: 'p-me', you: ME, media_connected: true });
    assert.deepEqual(call.of('start_peer'), [{ type: 'start_peer', peer: old + 1, iceServers: [], receiveTracks: 1 }]);
    assert.deepEqual(call.of('send_offer'), [{ type: 'send_offer', peer: old + 1 }]);
  });

  test('a session the server forgot joins again', () => {
    const call = new Call().toConnected();
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    call.step({ type: 'timer', name: 'retry' });
    call.step({ type: 'socket_open', socket: call.state.socketId });
    call.server({ type: 'lobby', participants: [BOT] });
    assert.deepEqual(call.sent(), [{ type: 'join', display_name: 'Ada' }]);
    assert.equal(call.state.resume, null);
  });

  test('retries back off, are bounded, and then the call ends', () => {
    const call = new Call().toConnected();
    const delays = [];
    for (let i = 0; i < RETRY_DELAYS_MS.length; i++) {
      call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
      delays.push(call.of('start_timer').map((e) => e.ms)[0]);
      call.step({ type: 'timer', name: 'retry' });
    }
    assert.deepEqual(delays, [...RETRY_DELAYS_MS]);
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    assert.equal(call.state.ui, 'ended');
    assert.equal(call.state.ended.detail, 'The connection was lost.');
    assert.deepEqual(call.of('start_timer'), []);
  });

  test('during a call only a successful rejoin resets the count, not a lobby', () => {
    const call = new Call().toConnected();
    for (let i = 0; i < RETRY_DELAYS_MS.length; i++) {
      call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
      call.step({ type: 'timer', name: 'retry' });
      call.step({ type: 'socket_open', socket: call.state.socketId });
      call.server({ type: 'lobby', participants: [BOT] });
    }
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    assert.equal(call.state.ui, 'ended');
    assert.equal(call.state.ended.detail, 'The connection was lost.');
  });

  test('a full room while reconnecting retries: our old place is still held', () => {
    const call = new Call().toConnected();
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    call.step({ type: 'timer', name: 'retry' });
    call.step({ type: 'socket_open', socket: call.state.socketId });
    call.server({ type: 'error', code: 'room_full' });
    assert.equal(call.state.ui, 'reconnecting');
    assert.deepEqual(call.of('start_timer'), [{ type: 'start_timer', name: 'retry', ms: RETRY_DELAYS_MS[1] }]);
  });

  test('a lobby socket that never answers gives up as unreachable', () => {
    const call = new Call();
    call.step({ type: 'start' });
    call.step({ type: 'timer', name: 'connect' });
    assert.equal(call.of('close_socket').length, 1);
    assert.equal(call.state.ui, 'offline');
    assert.equal(call.state.problem.code, 'unreachable');
    assert.equal(call.state.problem.title, "Can't reach BotCall");
  });

  test('a dropped lobby socket reconnects; retry on the problem screen starts over', () => {
    const call = new Call().toLobby();
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    assert.equal(call.state.ui, 'loading');
    assert.equal(call.state.loadingText, 'Reconnecting…');
    for (let i = 0; i < RETRY_DELAYS_MS.length; i++) {
      call.step({ type: 'timer', name: 'retry' });
      call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    }
    assert.equal(call.state.problem.code, 'unreachable');
    call.step({ type: 'retry', displayName: '' });
    assert.equal(call.state.retries, 0);
    assert.equal(call.of('open_socket').length, 1);
  });

  test('offline and back: the call stays on screen and follows the media path', () => {
    const call = new Call().toConnected();
    call.step({ type: 'offline', online: false });
    assert.equal(call.state.ui, 'reconnecting');
    assert.equal(call.state.netVisible, true);
    assert.deepEqual(call.announced(), ['You are offline', 'Reconnecting']);
    call.step({ type: 'online', online: true });
    assert.equal(call.state.ui, 'connected', 'the peer still says connected');
    assert.equal(call.state.netVisible, false);
    assert.deepEqual(call.of('open_socket'), [], 'the socket survived');
  });

  test('offline in the lobby shows the problem; online reconnects', () => {
    const call = new Call().toLobby();
    call.step({ type: 'offline', online: false });
    assert.equal(call.state.problem.code, 'offline');
    assert.equal(call.state.ui, 'offline');
    call.step({ type: 'online', online: true });
    assert.equal(call.state.problem, null);
    assert.equal(call.of('open_socket').length, 1);
  });

  test('a failed peer is restarted twice, then the call ends', () => {
    const call = new Call().toConnected();
    for (let i = 0; i < 2; i++) {
      const peer = call.state.peerId;
      call.step({ type: 'peer_state', peer, state: 'failed' });
      assert.equal(call.state.ui, 'reconnecting');
      assert.deepEqual(call.of('start_peer'), [{ type: 'start_peer', peer: peer + 1, iceServers: [], receiveTracks: 1 }]);
      assert.deepEqual(call.of('send_offer'), [{ type: 'send_offer', peer: peer + 1 }]);
      call.step({ type: 'peer_state', peer, state: 'failed' });
      assert.deepEqual(call.effects, [], 'the old peer is ignored');
    }
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'failed' });
    assert.equal(call.state.ui, 'ended');
    assert.equal(call.state.ended.detail, 'The connection was lost.');
  });
});

describe('hanging up', () => {
  test('tells the server, stops everything and shows how long the call was', () => {
    const call = new Call();
    call.now = 1000;
    call.toConnected(); // connected at 1000
    call.now = 1000 + 65_500;
    call.step({ type: 'hang_up' });
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'leave' }]);
    assert.deepEqual(
      call.effects.map((e) => e.type).filter((t) => ['send', 'stop_peer', 'stop_mic', 'close_socket'].includes(t)),
      ['send', 'stop_peer', 'stop_mic', 'close_socket'],
    );
    assert.equal(call.state.ui, 'ended');
    assert.deepEqual(call.state.ended, { detail: 'You hung up.', durationMs: 65_500 });
    assert.equal(formatDuration(call.state.ended.durationMs), '01:05');
    assert.equal(call.state.wantCall, false);
    assert.equal(call.state.peerId, null);
    assert.deepEqual(call.announced(), ['Call ended']);
    assert.deepEqual(call.of('focus'), [{ type: 'focus', screen: 'ended' }]);

    // The closed socket's late events change nothing.
    call.step({ type: 'socket_closed', socket: call.state.socketId - 1, code: 1000 });
    assert.deepEqual(call.effects, []);
    call.step({ type: 'page_hide' });
    assert.deepEqual(call.effects, []);
  });

  test('rejoin from the ended screen opens a new socket and joins on its lobby', () => {
    const call = new Call().toConnected();
    call.step({ type: 'hang_up' });
    call.step({ type: 'join', displayName: 'Ada' });
    assert.equal(call.state.ui, 'joining');
    assert.equal(call.of('open_socket').length, 1);
    call.step({ type: 'socket_open', socket: call.state.socketId });
    // As before the split, the last resume token still goes out; the server has
    // ended that session, so its lobby is not 'resumed' and the page joins anew.
    assert.deepEqual(call.sent(), [{ type: 'hello', invite: INVITE, resume: 'resume-1' }]);
    call.server({ type: 'lobby', participants: [BOT] });
    assert.deepEqual(call.sent(), [{ type: 'join', display_name: 'Ada' }]);
    assert.equal(call.state.resume, null);
  });

  test('leaving the page during a call says leave', () => {
    const call = new Call().toConnected();
    call.step({ type: 'page_hide' });
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'leave' }]);
  });
});

describe('pure helpers', () => {
  test('formatDuration', () => {
    assert.equal(formatDuration(-5), '00:00');
    assert.equal(formatDuration(59_999), '00:59');
    assert.equal(formatDuration(3_600_000 + 61_000), '1:01:01');
  });

  test('parseLocation', () => {
    assert.deepEqual(parseLocation('/join/r%20x/', '#invite=abc'), { roomId: 'r x', invite: 'abc' });
    assert.deepEqual(parseLocation('/join/%E0', ''), { roomId: '%E0', invite: null });
    assert.deepEqual(parseLocation('/', '#invite=abc'), { roomId: null, invite: null });
  });

  test('inviteTarget stays on this server', () => {
    const base = 'https://calls.example/';
    assert.equal(inviteTarget(' https://evil.example/join/r1#invite=s ', base), '/join/r1#invite=s');
    assert.equal(inviteTarget('/join/r1', base), null);
    assert.equal(inviteTarget('/elsewhere#invite=s', base), null);
    assert.equal(inviteTarget('http://[bad', base), null);
  });
});

describe('playout delay reports', () => {
  const inbound = (delay, count, extra = {}) => ({ type: 'inbound-rtp', kind: 'audio', jitterBufferDelay: delay, jitterBufferEmittedCount: count, ...extra });

  test('playoutSnapshot takes the inbound audio counters of a stats report', () => {
    const report = [
      { type: 'codec', mimeType: 'audio/opus' },
      { type: 'outbound-rtp', kind: 'audio', packetsSent: 50 },
      { type: 'inbound-rtp', kind: 'video', jitterBufferDelay: 9, jitterBufferEmittedCount: 3 },
      inbound(4.8, 96000),
    ];
    assert.deepEqual(playoutSnapshot(report), { delay: 4.8, count: 96000 });
    assert.deepEqual(playoutSnapshot(new Map([['a', { type: 'inbound-rtp', mediaType: 'audio', jitterBufferDelay: 1, jitterBufferEmittedCount: 2 }]]).values()), {
      delay: 1,
      count: 2,
    });
    assert.equal(playoutSnapshot([]), null);
    assert.equal(playoutSnapshot(null), null);
    assert.equal(playoutSnapshot([{ type: 'inbound-rtp', kind: 'audio' }]), null, 'no counters yet');
    assert.equal(playoutSnapshot([inbound('1', 2), inbound(NaN, 2), inbound(1, -1), null]), null);
  });

  test('playoutDelayMs is the delay over the last interval, else the average', () => {
    // 48 kHz: 48000 samples a second; 40 ms each, then 100 ms each.
    const first = { delay: 48000 * 0.04, count: 48000 };
    const second = { delay: first.delay + 48000 * 0.1, count: 96000 };
    assert.equal(playoutDelayMs(null, first), 40, 'no previous snapshot: the cumulative ratio');
    assert.equal(playoutDelayMs(first, second), 100, 'the delta over the last second');
    assert.equal(playoutDelayMs(second, second), 70, 'nothing played since: the cumulative ratio');
    assert.equal(playoutDelayMs(second, first), 40, 'counters went back (a new stream): the cumulative ratio');
    assert.equal(playoutDelayMs(null, { delay: 0.0234, count: 1 }), 23, 'rounded to whole ms');
    assert.equal(playoutDelayMs(null, { delay: 0.0235, count: 1 }), 24);
    assert.equal(playoutDelayMs(null, { delay: 60, count: 2 }), MAX_PLAYOUT_DELAY_MS, 'clamped to 10 s');
    assert.equal(playoutDelayMs({ delay: 5, count: 10 }, { delay: 4, count: 20 }), 200, 'a delay going back is not trusted');
    assert.equal(playoutDelayMs(null, { delay: 0, count: 0 }), null, 'nothing played yet');
    assert.equal(playoutDelayMs(first, null), null);
  });

  test('once connected, a stats timer reads getStats every second and reports the delay', () => {
    const call = new Call().toConnected();
    assert.deepEqual(
      call.of('start_interval').filter((e) => e.name === 'stats'),
      [{ type: 'start_interval', name: 'stats', ms: STATS_INTERVAL_MS }],
    );
    const peer = call.state.peerId;
    call.step({ type: 'timer', name: 'stats' });
    assert.deepEqual(call.of('read_stats'), [{ type: 'read_stats', peer }]);

    call.step({ type: 'stats', peer, snapshot: { delay: 0, count: 0 } });
    assert.deepEqual(call.sent(), [], 'no audio played yet: nothing to report');
    call.step({ type: 'stats', peer, snapshot: { delay: 960, count: 48000 } }); // 20 ms a sample
    assert.deepEqual(call.sent(), [{ type: 'playout_delay', ms: 20 }]);
    call.step({ type: 'stats', peer, snapshot: { delay: 960 + 2400, count: 96000 } });
    assert.deepEqual(call.sent(), [{ type: 'playout_delay', ms: 50 }]);
    call.step({ type: 'stats', peer, snapshot: null });
    assert.deepEqual(call.sent(), [], 'a reading without inbound audio says nothing');
    call.step({ type: 'stats', peer: peer - 1, snapshot: { delay: 1000, count: 1 } });
    assert.deepEqual(call.effects, [], 'an old peer connection is ignored');
  });

  test('no reports while not connected, and the timer stops with the peer', () => {
    const call = new Call().toConnected();
    const peer = call.state.peerId;
    call.step({ type: 'stats', peer, snapshot: { delay: 1, count: 48000 } });
    call.step({ type: 'peer_state', peer, state: 'disconnected' });
    call.step({ type: 'timer', name: 'stats' });
    assert.deepEqual(call.of('read_stats'), [], 'no reading while disconnected');
    call.step({ type: 'stats', peer, snapshot: { delay: 2, count: 96000 } });
    assert.deepEqual(call.sent(), [], 'a late reading is not sent while disconnected');

    call.step({ type: 'peer_state', peer, state: 'failed' }); // restart: a new peer
    assert.ok(call.effects.some((e) => e.type === 'cancel_timer' && e.name === 'stats'));
    assert.equal(call.state.playout, null, 'the new peer starts from no snapshot');
    const next = call.state.peerId;
    call.step({ type: 'stats', peer: next, snapshot: { delay: 0.03, count: 1 } });
    assert.deepEqual(call.sent(), [], 'the new peer is not connected yet');
    call.step({ type: 'peer_state', peer: next, state: 'connected' });
    call.step({ type: 'stats', peer: next, snapshot: { delay: 0.06, count: 2 } });
    assert.deepEqual(call.sent(), [{ type: 'playout_delay', ms: 30 }]);

    call.step({ type: 'hang_up' });
    assert.ok(call.effects.some((e) => e.type === 'cancel_timer' && e.name === 'stats'));
    call.step({ type: 'timer', name: 'stats' });
    assert.deepEqual(call.effects, []);
  });

  test('no reading while the signaling socket is down', () => {
    const call = new Call().toConnected();
    call.step({ type: 'socket_closed', socket: call.state.socketId, code: 1006 });
    call.step({ type: 'timer', name: 'stats' });
    assert.deepEqual(call.of('read_stats'), []);
  });
});

describe('TURN servers and a network that blocks calls', () => {
  const TURN = {
    urls: ['turn:turn.example:3478?transport=udp', 'turns:turn.example:5349?transport=tcp'],
    username: '1771160400:p-me',
    credential: 'jndfbIpIv/kIZzfzyczCQlTfS24=',
    expires_at: '2026-02-15T13:00:00Z',
  };

  test('joined with TURN servers makes the peer connection again with them before offering', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    const early = call.state.peerId;
    assert.deepEqual(call.of('start_peer'), [{ type: 'start_peer', peer: early, iceServers: [], receiveTracks: 1 }]);
    assert.deepEqual(call.of('start_timer'), [{ type: 'start_timer', name: 'ice', ms: ICE_TIMEOUT_MS }]);
    call.server({ type: 'joined', participant_id: ME.participant_id, you: ME, participants: [BOT], ice_servers: [TURN] });
    const servers = [{ urls: TURN.urls, username: TURN.username, credential: TURN.credential }];
    assert.deepEqual(call.of('stop_peer').length, 1);
    assert.deepEqual(call.of('start_peer'), [{ type: 'start_peer', peer: early + 1, iceServers: servers, receiveTracks: 1 }]);
    assert.deepEqual(call.of('send_offer'), [{ type: 'send_offer', peer: early + 1 }], 'the offer comes from the new connection');
    // A failed connection is made again with the same servers.
    call.step({ type: 'peer_state', peer: early + 1, state: 'failed' });
    assert.deepEqual(call.of('start_peer'), [{ type: 'start_peer', peer: early + 2, iceServers: servers, receiveTracks: 1 }]);
  });

  test('joined without TURN servers keeps the early peer connection', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    const early = call.state.peerId;
    call.server({ type: 'joined', participant_id: ME.participant_id, you: ME, participants: [BOT], ice_servers: [] });
    assert.deepEqual(call.of('start_peer'), []);
    assert.deepEqual(call.of('send_offer'), [{ type: 'send_offer', peer: early }]);
  });

  test('iceServerList keeps only well-formed TURN entries', () => {
    assert.deepEqual(iceServerList(undefined), []);
    assert.deepEqual(iceServerList([null, 3, { urls: ['stun:x'] }, { urls: 'turn:a', username: 1, credential: 'c' }]), []);
    assert.deepEqual(iceServerList([{ urls: 'turn:a:3478', username: 'u', credential: 'c', other: 1 }]), [
      { urls: ['turn:a:3478'], username: 'u', credential: 'c' },
    ]);
  });

  test('a peer connection not connected after the ICE timeout says the network blocks calls and leaves', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    call.server({ type: 'joined', participant_id: ME.participant_id, you: ME, participants: [BOT], ice_servers: [] });
    call.step({ type: 'offer_ready', peer: call.state.peerId, sdp: 'v=0 offer' });
    call.server({ type: 'answer', sdp: 'v=0 answer' });
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'connecting' });
    call.step({ type: 'timer', name: 'ice' });
    assert.equal(call.state.ui, 'error');
    assert.equal(call.state.problem.code, 'network_blocked');
    assert.equal(call.state.problem.title, 'Your network blocks calls');
    assert.equal(call.state.problem.retry, true);
    assert.ok(call.state.problem.steps.some((step) => step.includes('TURN')));
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'leave' }]);
    assert.equal(call.of('stop_peer').length, 1);
    assert.equal(call.state.wantCall, false);
    // Try again goes back to the lobby.
    call.step({ type: 'retry', displayName: 'Ada' });
    assert.equal(call.of('open_socket').length, 1);
  });

  test('ICE gathering that found no candidate says the network blocks calls at once', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    const peer = call.state.peerId;
    call.step({ type: 'ice_gathered', peer: peer - 1, count: 0 });
    assert.equal(call.state.ui, 'joining', 'an old peer is ignored');
    call.step({ type: 'ice_gathered', peer, count: 2 });
    assert.equal(call.state.ui, 'joining', 'candidates: wait for the checks');
    call.step({ type: 'ice_gathered', peer, count: 0 });
    assert.equal(call.state.problem.code, 'network_blocked');
  });

  /** A join up to a peer checking its candidates; returns the time of the click. */
  function toChecking(call) {
    call.toLobby();
    const joinedAt = call.now;
    call.step({ type: 'join', displayName: 'Ada' });
    call.server({ type: 'joined', participant_id: ME.participant_id, you: ME, participants: [BOT], ice_servers: [] });
    call.step({ type: 'offer_ready', peer: call.state.peerId, sdp: 'v=0 offer' });
    call.server({ type: 'answer', sdp: 'v=0 answer' });
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'connecting' });
    return joinedAt;
  }

  test('a peer that fails before it ever connected keeps the first deadline: network blocked within 10 s', () => {
    const call = new Call();
    const joinedAt = toChecking(call);
    call.wait(2000);
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'failed' });
    assert.equal(call.state.ui, 'reconnecting', 'the connection is made again');
    assert.equal(call.of('start_peer').length, 1);
    assert.deepEqual(call.of('start_timer'), [{ type: 'start_timer', name: 'ice', ms: ICE_TIMEOUT_MS - 2000 }]);
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'connecting' });
    // Then silence: no check is ever answered.
    call.wait(30_000);
    assert.equal(call.state.problem && call.state.problem.code, 'network_blocked');
    assert.ok(call.of('announce').some((e) => e.text === 'Your network blocks calls'));
    assert.equal(call.state.wantCall, false);
    assert.ok(!call.timers.has('ice'), 'nothing left to fire');
    assert.ok(call.now - joinedAt >= ICE_TIMEOUT_MS);
  });

  test('the network-blocked verdict falls at the first deadline, under 10 s from the join', () => {
    const call = new Call();
    const joinedAt = toChecking(call);
    call.wait(3000);
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'failed' });
    let verdictAt = null;
    while (verdictAt === null && call.now < joinedAt + 60_000) {
      call.wait(100);
      if (call.state.ui === 'error') verdictAt = call.now;
    }
    assert.equal(call.state.problem.code, 'network_blocked');
    assert.ok(verdictAt - joinedAt <= ICE_TIMEOUT_MS, `shown ${verdictAt - joinedAt} ms after the join`);
    assert.ok(verdictAt - joinedAt < 10_000);
  });

  test('a never-connected peer failing past the deadline, or out of restarts, is network blocked, not a lost connection', () => {
    // Past the deadline (the timer fired late, or 'failed' came in the same turn).
    let call = new Call();
    let joinedAt = toChecking(call);
    call.now = joinedAt + 2000;
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'failed' });
    call.now = joinedAt + ICE_TIMEOUT_MS + 500;
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'failed' });
    assert.equal(call.state.ui, 'error');
    assert.equal(call.state.problem.code, 'network_blocked');
    assert.equal(call.state.ended, null);
    assert.deepEqual(call.sent(), [{ type: 'control', action: 'leave' }]);

    // Three quick failures: out of restarts before the deadline.
    call = new Call();
    joinedAt = toChecking(call);
    for (let i = 0; i <= 2; i++) {
      call.now += 500;
      call.step({ type: 'peer_state', peer: call.state.peerId, state: 'failed' });
    }
    assert.ok(call.now < joinedAt + ICE_TIMEOUT_MS);
    assert.equal(call.state.problem.code, 'network_blocked');
    assert.equal(call.state.ended, null);
  });

  test('the TURN servers from joined remake the connection under the same deadline', () => {
    const call = new Call().toLobby();
    call.step({ type: 'join', displayName: 'Ada' });
    call.wait(1500);
    call.server({
      type: 'joined',
      participant_id: ME.participant_id,
      you: ME,
      participants: [BOT],
      ice_servers: [{ urls: ['turn:turn.example:3478'], username: 'u', credential: 'c' }],
    });
    assert.equal(call.of('start_peer').length, 1);
    assert.deepEqual(call.of('start_timer'), [{ type: 'start_timer', name: 'ice', ms: ICE_TIMEOUT_MS - 1500 }]);
  });

  test('a call that connected and later fails restarts, each restart with a fresh deadline, then the connection is lost', () => {
    const call = new Call().toConnected();
    call.wait(60_000); // a minute of call
    for (let i = 0; i < 2; i++) {
      const peer = call.state.peerId;
      call.step({ type: 'peer_state', peer, state: 'failed' });
      assert.equal(call.state.ui, 'reconnecting');
      assert.equal(call.of('start_peer').length, 1, 'made again, however long the call has run');
      assert.deepEqual(call.of('start_timer'), [{ type: 'start_timer', name: 'ice', ms: ICE_TIMEOUT_MS }]);
      call.wait(2000);
    }
    call.step({ type: 'peer_state', peer: call.state.peerId, state: 'failed' });
    assert.equal(call.state.ui, 'ended');
    assert.equal(call.state.ended.detail, 'The connection was lost.');
    assert.equal(call.state.problem, null);
  });

  test('a connected peer cancels the ICE timeout; a stale one is harmless', () => {
    const call = new Call().toConnected();
    assert.ok(call.of('cancel_timer').some((e) => e.name === 'ice'));
    call.step({ type: 'timer', name: 'ice' });
    assert.equal(call.state.ui, 'connected');
    assert.deepEqual(call.effects, []);
  });
});
