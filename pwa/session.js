// BotCall PWA: the call's state machine, sans-IO.
//
// No DOM, no WebSocket, no RTCPeerConnection, no timers, no clock: the shell
// (app.js) feeds inputs to reduce(state, input) and carries out the effects it
// returns. Inputs are the server's messages ({type: 'message', socket, message}),
// the user's clicks, the socket's and the peer connection's events and fired
// timers; each may carry `now` (performance.now() in ms) and `online`
// (navigator.onLine), stamped by the shell. Effects are plain objects:
//
//   send {message}               send JSON on the signaling socket
//   open_socket {socket, roomId} open /v1/signal/<room>; tag its events with `socket`
//   close_socket {code}          close the current socket (its events are ignored from now)
//   start_timer / start_interval {name, ms}, cancel_timer {name}
//                                timers fire back as {type: 'timer', name}
//   start_peer {peer, iceServers, receiveTracks}, stop_peer, send_offer {peer}, apply_answer {peer, sdp}
//                                iceServers: the RTCIceServer list (TURN) the connection uses
//                                receiveTracks: downstream audio tracks to offer (group calls)
//   ({type: 'ice_gathered', peer, count} comes back when the peer's ICE gathering completes)
//   read_stats {peer}            read the peer's getStats(); answer {type: 'stats', peer, snapshot}
//                                with snapshot = playoutSnapshot(report.values())
//   open_mic {attempt}, use_mic {attempt}, drop_mic {attempt}, stop_mic, mic_enabled {enabled}
//   prepare_audio, unlock_audio  the AudioContext (ahead of the click; inside it)
//   announce {text}, focus {screen}, clear_chat_input
//
// After every step the shell renders the new state (view.js). States are never
// modified: reduce returns new objects, and test code freezes them to prove it.
// Everything the server sends reaches the state through text() or as data the
// view writes with textContent, never as HTML.

export const CONNECT_TIMEOUT_MS = 8000;
export const PING_INTERVAL_MS = 15000;
export const RETRY_DELAYS_MS = Object.freeze([1000, 2000, 4000, 8000, 15000]);
export const MAX_PEER_RESTARTS = 2;
// A peer connection not connected this long after the join made its first one: the
// network blocks calls (no check answered; docs/protocol.md). Under the 10 s promised
// there, with a margin for a busy page. Connections made again before the first
// connected (TURN servers from 'joined', a restart after 'failed') keep that deadline.
// Gathering no candidate at all says so at once.
export const ICE_TIMEOUT_MS = 9000;
export const MAX_CHAT_LINES = 200;
// The playout_delay report: once a second while connected, 0..10000 ms (docs/protocol.md).
export const STATS_INTERVAL_MS = 1000;
export const MAX_PLAYOUT_DELAY_MS = 10000;
const MAX_TEXT = 200;
const MAX_CHAT_TEXT = 4000;

// Close codes of /v1/signal (docs: the signaling contract) and the problem each means.
export const CLOSE_PROBLEMS = Object.freeze({ 4401: 'invite_invalid', 4404: 'room_not_found', 4409: 'room_full', 4410: 'room_closed' });
const FATAL_ERRORS = new Set(['invite_invalid', 'room_not_found', 'room_full', 'room_closed']);
export const ERROR_ALIASES = Object.freeze({ room_expired: 'room_closed' });
const MIC_PROBLEMS = new Set(['mic_denied', 'mic_missing', 'mic_busy']);

export const PROBLEMS = deepFreeze({
  invite_invalid: {
    title: 'This invite link is not valid',
    detail: 'Check that you opened the whole link, or ask the person who invited you for a new one.',
  },
  invite_missing: {
    title: 'This invite link is not valid',
    detail: 'The link is missing its secret part (the text after “#invite=”). Open the full link you were sent.',
  },
  room_not_found: { title: "We can't find this call", detail: 'It may have expired, or the link may be mistyped.' },
  room_closed: { title: 'This call has ended', detail: 'The call was closed or it expired. Ask for a new invite to talk again.' },
  room_full: { title: 'This call is full', detail: 'All the places for people are taken. Try again when someone leaves.', retry: true },
  offline: { title: "You're offline", detail: 'The network is gone. BotCall reconnects as soon as it is back.', retry: true },
  unreachable: {
    title: "Can't reach BotCall",
    detail: "The BotCall server isn't answering. Check your connection, then try again.",
    retry: true,
  },
  mic_denied: {
    title: 'Microphone blocked',
    detail: 'BotCall needs your microphone to join the call. To allow it:',
    steps: [
      'Click or tap the icon next to the web address (a lock or sliders).',
      'Set Microphone to Allow.',
      'On iPhone or iPad: Settings › Safari › Microphone › Allow.',
      'Then press Try again.',
    ],
    retry: true,
  },
  mic_missing: { title: 'No microphone found', detail: 'Connect a microphone or headset, then try again.', retry: true },
  mic_busy: { title: "Can't use your microphone", detail: 'Another app may be using it. Close that app, then try again.', retry: true },
  insecure: { title: 'This link must use https', detail: 'Browsers only allow the microphone on secure pages. Open the https:// version of the link.' },
  no_webrtc: { title: "This browser can't make calls", detail: 'Open the link in a recent Chrome, Edge, Firefox or Safari.' },
  failed: { title: 'Something went wrong', detail: 'The call could not start.', retry: true },
  network_blocked: {
    title: 'Your network blocks calls',
    detail: 'Your browser could not open an audio connection to BotCall from this network. Some office, school, hotel or public networks block calls.',
    steps: [
      'Try another network, for example your phone’s mobile data or a hotspot.',
      'Or ask whoever runs this BotCall to add a TURN relay over TCP or TLS (port 443): it lets calls through strict networks.',
      'Then press Try again.',
    ],
    retry: true,
  },
  bad_offer: {
    title: "Your browser's call setup isn't supported",
    detail: 'BotCall could not use the audio connection this browser proposed. Try again, or use a recent Chrome, Edge, Firefox or Safari.',
    retry: true,
  },
});

// UI state -> the screen that shows it.
export const SCREEN_OF = Object.freeze({
  loading: 'loading',
  home: 'home',
  lobby: 'lobby',
  joining: 'call',
  connecting: 'call',
  connected: 'call',
  reconnecting: 'call',
  ended: 'ended',
  offline: 'problem',
  error: 'problem',
});
const ANNOUNCE = { lobby: 'Ready to join', connecting: 'Connecting', connected: 'Connected', reconnecting: 'Reconnecting', ended: 'Call ended' };

// --- pure helpers -------------------------------------------------------------------

function deepFreeze(value) {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze(value[key]);
  }
  return value;
}

/** A server-supplied string or number as display text (at most 200 characters). */
export function text(value, fallback = '') {
  if (typeof value !== 'string' && typeof value !== 'number') return fallback;
  return String(value).slice(0, MAX_TEXT);
}

/** The name a participant is shown by. */
export function nameOf(p) {
  if (!p || typeof p !== 'object') return 'Someone';
  return text(p.display_name) || text(p.agent_id) || 'Guest';
}

/** "mm:ss", or "h:mm:ss" from an hour on. */
export function formatDuration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  const hours = Math.floor(total / 3600);
  const clock = `${pad(Math.floor((total % 3600) / 60))}:${pad(total % 60)}`;
  return hours ? `${hours}:${clock}` : clock;
}

/** The problem code for a getUserMedia rejection's error name. */
export function micProblem(errorName) {
  if (errorName === 'NotAllowedError' || errorName === 'SecurityError') return 'mic_denied';
  if (errorName === 'NotFoundError' || errorName === 'OverconstrainedError') return 'mic_missing';
  if (errorName === 'NotReadableError' || errorName === 'AbortError') return 'mic_busy';
  return 'failed';
}

/**
 * The received audio's jitter buffer counters in a getStats() report.
 * @param {Iterable<object>} stats the report's values (RTCStatsReport.values())
 * @returns {{delay: number, count: number}|null} jitterBufferDelay (cumulative seconds) and
 *   jitterBufferEmittedCount (cumulative samples) of the inbound-rtp audio, or null without one
 */
export function playoutSnapshot(stats) {
  for (const s of stats || []) {
    if (!s || s.type !== 'inbound-rtp' || (s.kind || s.mediaType) !== 'audio') continue;
    const delay = s.jitterBufferDelay;
    const count = s.jitterBufferEmittedCount;
    if (Number.isFinite(delay) && Number.isFinite(count) && delay >= 0 && count >= 0) return { delay, count };
  }
  return null;
}

/**
 * How long received audio waits in the browser's jitter buffer before it is played.
 *
 * The counters are cumulative since the stream began, so the current delay is the
 * delay added over the samples emitted since the previous snapshot; when no sample
 * came out since then (or the counters went back: a new stream), the average over
 * the whole stream.
 * @param {{delay: number, count: number}|null} previous the snapshot a second ago, or null
 * @param {{delay: number, count: number}|null} current from playoutSnapshot
 * @returns {number|null} whole ms in 0..MAX_PLAYOUT_DELAY_MS, or null before any audio was played
 */
export function playoutDelayMs(previous, current) {
  if (!current || !(current.count > 0)) return null;
  let seconds = current.delay / current.count;
  if (previous && current.count > previous.count && current.delay >= previous.delay) {
    seconds = (current.delay - previous.delay) / (current.count - previous.count);
  }
  if (!Number.isFinite(seconds)) return null;
  return Math.min(MAX_PLAYOUT_DELAY_MS, Math.max(0, Math.round(seconds * 1000)));
}

/**
 * The room and invite of a page address: /join/<room>#invite=<secret>.
 * @returns {{roomId: string|null, invite: string|null}} roomId null off a /join/ path
 */
export function parseLocation(pathname, hash) {
  const match = /^\/join\/([^/]+)\/?$/.exec(pathname);
  if (!match) return { roomId: null, invite: null };
  let roomId;
  try {
    roomId = decodeURIComponent(match[1]);
  } catch {
    roomId = match[1];
  }
  return { roomId, invite: new URLSearchParams(hash.slice(1)).get('invite') };
}

/** The same-server path of a pasted invite link, or null when it is not one. */
export function inviteTarget(value, base) {
  let url;
  try {
    url = new URL(value.trim(), base);
  } catch {
    return null;
  }
  if (!/^\/join\/[^/]+\/?$/.test(url.pathname) || !url.hash.startsWith('#invite=')) return null;
  return url.pathname + url.hash; // stay on this server
}

/**
 * The state before the page has done anything.
 * @param {object} options
 * @param {string|null} options.roomId from the path (null: the home page)
 * @param {string|null} options.invite the fragment's secret
 * @param {boolean} [options.online] navigator.onLine
 * @param {boolean} [options.secure] window.isSecureContext
 * @param {boolean} [options.webrtc] RTCPeerConnection and getUserMedia exist
 */
export function initialState({ roomId = null, invite = null, online = true, secure = true, webrtc = true } = {}) {
  return Object.freeze({
    ui: 'loading',
    loadingText: 'Opening the call…',
    problem: null, // {code, title, detail, steps, retry} on the problem screen
    ended: null, // {detail, durationMs} on the ended screen
    roomId,
    invite,
    online,
    secure,
    webrtc,
    netVisible: !online,
    socketId: 0, // events of a replaced socket are ignored
    ws: null, // null, 'connecting' or 'open'
    lobbyReceived: false,
    everConnected: false,
    pendingError: null,
    joinSent: false,
    wantCall: false, // the user clicked Join and has not hung up
    resume: null,
    resuming: false,
    displayName: '',
    participants: Object.freeze([]),
    participantId: null,
    lobbyMax: null,
    // Downstream audio tracks to offer (the lobby's receive_tracks; group calls).
    receiveTracks: 1,
    canChat: true,
    attempt: 0, // the microphone request of the last join
    // The browser's microphone permission ('granted', 'prompt', 'denied' or
    // 'unknown'), from the page's permissions query. On 'prompt' a join waits
    // for the microphone before it joins (awaitingMic).
    micPermission: 'unknown',
    awaitingMic: false,
    peerSeq: 0,
    peerId: null, // the current peer connection, or null
    peerState: null, // its last connectionState
    peerRestarts: 0,
    // When the network-blocked verdict falls (performance.now() ms): set by the
    // join's first peer connection, kept by those made again until one connects.
    iceDeadline: null,
    iceServers: Object.freeze([]), // TURN servers from 'joined' (RTCIceServer objects)
    peerIceServers: null, // the list the current peer connection was made with
    playout: null, // the current peer's last playoutSnapshot, or null
    muted: false,
    connectedAt: null,
    retries: 0,
    chat: Object.freeze([]), // {id, who, body} or {id, note}
    chatSeq: 0,
    chatOpen: false,
    unread: 0,
    // performance.now() marks of the last join: click, mic, joined, answer, connected, audio.
    marks: Object.freeze({}),
  });
}

// --- the reducer ----------------------------------------------------------------------

/**
 * One step of the call.
 * @param {object} state from initialState or a previous step (not modified)
 * @param {object} input {type, ...}; see the top of this file
 * @returns {{state: object, effects: object[]}}
 */
export function reduce(state, input) {
  const step = new Step(state, input);
  step.handle(input);
  return { state: Object.freeze(step.s), effects: step.effects };
}

class Step {
  constructor(state, input) {
    this.s = { ...state }; // a fresh top level; nested values are replaced, never changed
    if (typeof input.online === 'boolean') this.s.online = input.online;
    this.now = typeof input.now === 'number' ? input.now : 0;
    this.effects = [];
  }

  emit(effect) {
    this.effects.push(effect);
  }

  handle(input) {
    const s = this.s;
    switch (input.type) {
      case 'start':
        this.start();
        break;
      case 'join':
        this.joinCall(input.displayName);
        break;
      case 'retry':
        this.retry(input.displayName);
        break;
      case 'mute_clicked':
        this.setMuted(!s.muted, true);
        break;
      case 'hang_up':
        this.send({ type: 'control', action: 'leave' });
        this.endCall('You hung up.');
        break;
      case 'chat_submit':
        this.submitChat(input.text);
        break;
      case 'chat_toggled':
        s.chatOpen = input.open === true;
        if (s.chatOpen) s.unread = 0;
        break;
      case 'page_hide':
        if (s.wantCall) this.send({ type: 'control', action: 'leave' });
        break;
      case 'offline':
        this.wentOffline();
        break;
      case 'online':
        this.cameOnline();
        break;
      case 'socket_open':
        if (input.socket !== s.socketId) break;
        s.ws = 'open';
        // After a dropped socket, ask for our place in the call back (our session).
        this.send(s.wantCall && s.resume ? { type: 'hello', invite: s.invite, resume: s.resume } : { type: 'hello', invite: s.invite });
        break;
      case 'socket_closed':
        if (input.socket === s.socketId) this.socketLost(input.code);
        break;
      case 'message':
        if (input.socket === s.socketId && input.message && typeof input.message.type === 'string') this.onMessage(input.message);
        break;
      case 'timer':
        this.onTimer(input.name);
        break;
      case 'mic_permission':
        if (['granted', 'prompt', 'denied'].includes(input.state)) s.micPermission = input.state;
        break;
      case 'mic_ready':
        this.micReady(input.attempt);
        break;
      case 'mic_failed':
        this.micFailed(input.attempt, input.name, input.message);
        break;
      case 'peer_state':
        if (input.peer === s.peerId && s.peerId !== null) {
          s.peerState = input.state;
          this.onPeerState(input.state);
        }
        break;
      case 'ice_gathered':
        // No candidate at all (UDP blocked and no TURN it can reach): nothing can connect.
        if (input.peer === s.peerId && s.peerId !== null && input.count === 0 && s.peerState !== 'connected') this.networkBlocked();
        break;
      case 'offer_ready':
        if (input.peer === s.peerId && s.peerId !== null) this.send({ type: 'offer', sdp: input.sdp });
        break;
      case 'offer_failed':
        // As before the split: a failed offer ends the attempt whichever peer made it.
        this.leaveAll();
        this.showProblem('failed', input.message);
        break;
      case 'answer_applying':
        // The join's answer: a later one is a renegotiation (the page offers again
        // once the microphone's stream is set on the sender, for its msid).
        if (input.peer === s.peerId && s.marks.answer === undefined) s.marks = Object.freeze({ ...s.marks, answer: this.now });
        break;
      case 'answer_failed':
        if (input.peer !== s.peerId || s.peerId === null) break;
        this.leaveAll();
        this.showProblem('failed', input.message);
        break;
      case 'stats':
        if (input.peer === s.peerId && s.peerId !== null) this.onStats(input.snapshot);
        break;
      case 'audio_heard':
        if (s.marks.audio === undefined) s.marks = Object.freeze({ ...s.marks, audio: this.now });
        break;
      default:
        break;
    }
  }

  // --- states and screens ---

  setUi(ui) {
    const previous = this.s.ui;
    this.s.ui = ui;
    if (previous === ui) return;
    const screen = SCREEN_OF[ui];
    if (SCREEN_OF[previous] !== screen && screen !== 'loading') this.emit({ type: 'focus', screen });
    if (ANNOUNCE[ui]) this.announce(ANNOUNCE[ui]);
  }

  announce(message) {
    this.emit({ type: 'announce', text: message });
  }

  showLoading(message) {
    this.s.loadingText = message;
    this.setUi('loading');
  }

  showProblem(code, message) {
    const known = code in PROBLEMS ? code : 'failed';
    const problem = PROBLEMS[known];
    this.s.problem = Object.freeze({
      code: known,
      title: problem.title,
      detail: message ? `${problem.detail} (${text(message)})` : problem.detail,
      steps: problem.steps || null,
      retry: problem.retry === true,
    });
    this.setUi(code === 'offline' || code === 'unreachable' ? 'offline' : 'error');
    this.announce(problem.title);
  }

  showOffline() {
    this.s.netVisible = true;
    if (this.s.wantCall) {
      // Keep the call on screen: the media path may survive a short outage.
      this.setUi('reconnecting');
    } else {
      this.showProblem('offline');
    }
  }

  start() {
    const s = this.s;
    if (s.roomId === null) this.setUi('home');
    else if (!s.invite) this.showProblem('invite_missing');
    else this.connect();
  }

  // --- the signaling socket ---

  send(message) {
    if (this.s.ws !== 'open') return false;
    this.emit({ type: 'send', message });
    return true;
  }

  connect() {
    const s = this.s;
    this.emit({ type: 'cancel_timer', name: 'retry' });
    this.closeSocket();
    if (!s.online) {
      this.showOffline();
      return;
    }
    if (s.wantCall) {
      if (s.ui !== 'joining') this.setUi('reconnecting');
    } else {
      this.showLoading(s.everConnected ? 'Reconnecting…' : 'Opening the call…');
    }
    s.socketId += 1;
    s.ws = 'connecting';
    s.lobbyReceived = false;
    s.pendingError = null;
    s.joinSent = false;
    this.emit({ type: 'open_socket', socket: s.socketId, roomId: s.roomId });
    this.emit({ type: 'start_timer', name: 'connect', ms: CONNECT_TIMEOUT_MS });
  }

  closeSocket(code = 1000) {
    const s = this.s;
    this.emit({ type: 'cancel_timer', name: 'connect' });
    this.emit({ type: 'cancel_timer', name: 'ping' });
    if (s.ws !== null) this.emit({ type: 'close_socket', code });
    s.ws = null;
    s.socketId += 1;
  }

  socketLost(code) {
    const s = this.s;
    this.emit({ type: 'cancel_timer', name: 'connect' });
    this.emit({ type: 'cancel_timer', name: 'ping' });
    s.ws = null;
    s.socketId += 1;
    const problem = s.pendingError || CLOSE_PROBLEMS[code];
    if (problem) {
      this.fatal(problem);
      return;
    }
    if (s.ui === 'ended' || s.ui === 'error') return;
    if (code === 4408) {
      this.endCall('Your time on this call ran out.');
    } else if (code === 4411) {
      this.endCall('You joined this call from another tab or device.');
    } else if (code === 1000 && s.wantCall && s.participantId) {
      this.endCall('The call ended.');
    } else {
      this.scheduleRetry();
    }
  }

  scheduleRetry() {
    const s = this.s;
    if (!s.online) {
      this.showOffline(); // the 'online' input reconnects
      return;
    }
    if (!s.everConnected) {
      this.showProblem('unreachable');
      return;
    }
    if (s.retries >= RETRY_DELAYS_MS.length) {
      if (s.wantCall) this.endCall('The connection was lost.');
      else this.showProblem('unreachable');
      return;
    }
    const delay = RETRY_DELAYS_MS[s.retries];
    s.retries += 1;
    if (s.wantCall) this.setUi('reconnecting');
    else this.showLoading('Reconnecting…');
    this.emit({ type: 'start_timer', name: 'retry', ms: delay });
  }

  onTimer(name) {
    const s = this.s;
    if (name === 'connect') {
      if (s.ws !== null && !s.lobbyReceived) {
        this.closeSocket();
        this.socketLost(1006);
      }
    } else if (name === 'ping') {
      this.send({ type: 'ping' });
    } else if (name === 'retry') {
      this.connect();
    } else if (name === 'ice') {
      if (s.peerId !== null && s.peerState !== 'connected') this.networkBlocked();
    } else if (name === 'stats') {
      if (s.peerId !== null && s.peerState === 'connected' && s.ws === 'open') this.emit({ type: 'read_stats', peer: s.peerId });
    }
  }

  // --- server messages ---

  onMessage(message) {
    const s = this.s;
    switch (message.type) {
      case 'lobby':
        this.emit({ type: 'cancel_timer', name: 'connect' });
        s.lobbyReceived = true;
        s.everConnected = true;
        // A rejoin counts as recovered only once the join itself succeeds.
        if (!s.wantCall) s.retries = 0;
        s.lobbyMax = Number.isInteger(message.max_human_participants) ? message.max_human_participants : null;
        // Bounded here too: a page never offers more than 8 tracks (docs/protocol.md, group calls).
        s.receiveTracks = Number.isInteger(message.receive_tracks) ? Math.min(8, Math.max(1, message.receive_tracks)) : 1;
        this.setParticipants(message.participants);
        this.emit({ type: 'start_interval', name: 'ping', ms: PING_INTERVAL_MS });
        if (s.wantCall && message.resumed === true) {
          s.joinSent = true; // the server resumed our session: 'joined' follows
          s.resuming = true;
        } else if (s.wantCall) {
          s.resume = null;
          if (!s.awaitingMic) this.sendJoin(); // else micReady joins
        } else {
          this.setUi('lobby');
          this.emit({ type: 'prepare_audio' });
        }
        break;
      case 'joined':
      case 'welcome':
        this.onJoined(message);
        break;
      case 'answer':
        if (s.peerId !== null && typeof message.sdp === 'string') this.emit({ type: 'apply_answer', peer: s.peerId, sdp: message.sdp });
        break;
      case 'participant_joined': {
        const list = withParticipant(s.participants, message.participant, s.participants);
        if (list) {
          s.participants = list;
          this.announce(`${nameOf(message.participant)} joined`);
        }
        break;
      }
      case 'participant_left':
        this.onParticipantLeft(text(message.participant_id));
        break;
      case 'muted':
        this.onFlag(text(message.participant_id), 'muted', message.muted === true);
        break;
      case 'speech_started':
      case 'speech_stopped':
        this.onFlag(text(message.participant_id), 'speaking', message.type === 'speech_started');
        break;
      case 'speaking': // the older event, driven by the same detector
        this.onFlag(text(message.participant_id), 'speaking', message.speaking === true);
        break;
      case 'chat':
        this.appendChat(text(message.participant_id), message.text);
        break;
      case 'room_closed':
        s.pendingError = 'room_closed';
        this.fatal('room_closed');
        break;
      case 'error':
        this.onError(text(message.code), text(message.message));
        break;
      default:
        break; // pong, and events this page does not use (stream_started, mark, cleared…)
    }
  }

  onJoined(message) {
    const s = this.s;
    if (!s.joinSent) return;
    s.participantId = text(message.participant_id, null);
    s.marks = Object.freeze({ ...s.marks, joined: this.now });
    s.retries = 0;
    // Only sessions with text_chat may send chat; everyone can read it.
    s.canChat = !!(message.you && message.you.capabilities && message.you.capabilities.text_chat === true);
    this.setParticipants([message.you, ...(Array.isArray(message.participants) ? message.participants : [])]);
    s.resume = typeof message.resume === 'string' ? message.resume : null;
    s.iceServers = iceServerList(message.ice_servers);
    if (s.resuming) {
      s.resuming = false;
      // Media kept flowing over UDP while only the socket was down: keep it.
      if (message.media_connected === true && s.peerId !== null && s.peerState === 'connected') {
        this.setUi('connected');
        return;
      }
      this.startPeer();
    } else if (s.peerId !== null && !sameJson(s.peerIceServers, s.iceServers)) {
      // The offer was prepared before the TURN servers were known: a peer
      // connection gathers with the servers it was made with, so make it again.
      this.startPeer();
    }
    this.sendOffer();
    if (s.ui === 'joining') this.setUi('connecting');
  }

  onError(reported, message) {
    const code = ERROR_ALIASES[reported] || reported;
    if (FATAL_ERRORS.has(code)) {
      this.s.pendingError = code;
      this.fatal(code);
    } else if (code === 'bad_offer') {
      // The server says why (its message names what it could not answer). The
      // session is still joined: leave it, or the server holds our place (and
      // shows us to the others) as after a dropped socket.
      this.send({ type: 'control', action: 'leave' });
      this.leaveAll();
      this.showProblem('bad_offer', message);
    } else if (message) {
      this.announce(message);
      if (code === 'chat_disabled' || code === 'rate_limited') this.appendLine({ note: message });
    }
  }

  fatal(code) {
    const s = this.s;
    if (s.ui === 'ended' || (s.ui === 'error' && s.problem !== null && s.problem.code === code)) return;
    if (code === 'room_closed' && s.wantCall) {
      this.endCall('The call was closed.');
      return;
    }
    if (code === 'room_full' && s.wantCall && s.ui === 'reconnecting') {
      // Rejoining after a dropped socket: our old place is held until the server
      // notices the drop, so keep retrying for a while instead of giving up.
      s.pendingError = null;
      this.closeSocket();
      this.scheduleRetry();
      return;
    }
    this.leaveAll();
    this.showProblem(code);
  }

  // --- participants ---

  setParticipants(list) {
    let next = Object.freeze([]);
    for (const p of Array.isArray(list) ? list : []) next = withParticipant(next, p, this.s.participants) || next;
    this.s.participants = next;
  }

  onParticipantLeft(id) {
    const s = this.s;
    if (id && id === s.participantId) {
      this.endCall('You left the call.');
      return;
    }
    const p = s.participants.find((x) => x.participant_id === id);
    if (p) {
      s.participants = Object.freeze(s.participants.filter((x) => x !== p));
      this.announce(`${nameOf(p)} left`);
    }
  }

  onFlag(id, flag, value) {
    const s = this.s;
    const index = s.participants.findIndex((x) => x.participant_id === id);
    if (index < 0) return;
    const list = [...s.participants];
    list[index] = Object.freeze({ ...list[index], [flag]: value });
    s.participants = Object.freeze(list);
    if (flag === 'muted' && id === s.participantId && value !== s.muted) this.setMuted(value, false);
  }

  // --- chat ---

  appendLine(line) {
    const s = this.s;
    s.chatSeq += 1;
    s.chat = Object.freeze([...s.chat, Object.freeze({ id: s.chatSeq, ...line })].slice(-MAX_CHAT_LINES));
    if (!s.chatOpen) s.unread += 1;
  }

  appendChat(id, body) {
    if (typeof body !== 'string') return;
    const s = this.s;
    const who = id === s.participantId ? 'You' : nameOf(s.participants.find((x) => x.participant_id === id));
    this.appendLine({ who, body: body.slice(0, MAX_CHAT_TEXT) });
  }

  submitChat(value) {
    const body = typeof value === 'string' ? value.trim() : '';
    if (body && this.send({ type: 'chat', text: body })) {
      this.appendChat(this.s.participantId, body);
      this.emit({ type: 'clear_chat_input' });
    }
  }

  // --- joining, media ---

  joinCall(displayName) {
    const s = this.s;
    if (s.ui === 'joining') return;
    if (!s.secure) {
      this.showProblem('insecure');
      return;
    }
    if (!s.webrtc) {
      this.showProblem('no_webrtc');
      return;
    }
    s.attempt += 1;
    s.marks = Object.freeze({ click: this.now });
    s.displayName = typeof displayName === 'string' ? displayName.trim() : '';
    s.connectedAt = null;
    s.peerRestarts = 0;
    s.iceDeadline = null;
    s.muted = false;
    this.emit({ type: 'stop_mic' });
    this.setUi('joining');
    // Allowed before: the join, the offer and the connection proceed while the
    // microphone opens (the lobby has usually opened it already): the track is
    // attached when it arrives. The join goes first: creating the AudioContext
    // can hold the main thread for tens of ms.
    // A first visit ('prompt'): the join waits until the person has allowed the
    // microphone. Connected while the prompt was open, Chromium's audio output
    // started 100-300 ms after the bot's first packets and kept that backlog for
    // seconds (docs/bench-results.md §16i); the bot also learns of a person only
    // when they can answer it.
    s.wantCall = true;
    s.awaitingMic = s.micPermission === 'prompt';
    if (s.awaitingMic) this.announce('Allow the microphone to join the call');
    else this.joinNow();
    this.emit({ type: 'unlock_audio' });
    this.emit({ type: 'open_mic', attempt: s.attempt });
  }

  joinNow() {
    const s = this.s;
    if (s.ws !== null && s.lobbyReceived) this.sendJoin();
    else this.connect(); // its 'lobby' sends the join
  }

  micReady(attempt) {
    const s = this.s;
    if (attempt !== s.attempt || !s.wantCall) {
      this.emit({ type: 'drop_mic', attempt });
      return;
    }
    s.marks = Object.freeze({ ...s.marks, mic: this.now });
    this.emit({ type: 'use_mic', attempt });
    this.setMuted(s.muted, false);
    s.micPermission = 'granted';
    if (s.awaitingMic) {
      s.awaitingMic = false;
      this.joinNow();
    }
  }

  micFailed(attempt, errorName, message) {
    if (attempt !== this.s.attempt) return;
    const problem = micProblem(errorName);
    this.send({ type: 'control', action: 'leave' });
    this.leaveAll();
    this.showProblem(problem, problem === 'failed' ? message : '');
  }

  sendJoin() {
    const s = this.s;
    s.joinSent = true;
    s.participantId = null;
    this.send({ type: 'join', display_name: s.displayName });
    // Build the offer while the server answers the join: it is sent on 'joined'.
    this.startPeer();
  }

  startPeer() {
    const s = this.s;
    this.stopPeer();
    s.peerSeq += 1;
    s.peerId = s.peerSeq;
    s.peerState = 'new';
    s.peerIceServers = s.iceServers;
    this.emit({ type: 'start_peer', peer: s.peerId, iceServers: s.iceServers, receiveTracks: s.receiveTracks });
    // Until one has connected, a connection made again keeps the join's first
    // deadline: a fresh 9 s per restart would leave "Reconnecting" up for half a
    // minute. Once the call has connected, each one has its own.
    if (s.iceDeadline === null || s.connectedAt !== null) s.iceDeadline = this.now + ICE_TIMEOUT_MS;
    this.emit({ type: 'start_timer', name: 'ice', ms: Math.max(0, s.iceDeadline - this.now) });
  }

  /** The peer connection did not connect in time: say the network blocks calls, and leave. */
  networkBlocked() {
    this.send({ type: 'control', action: 'leave' });
    this.leaveAll();
    this.showProblem('network_blocked');
  }

  stopPeer() {
    this.s.peerId = null;
    this.s.peerState = null;
    this.s.playout = null;
    this.s.peerIceServers = null;
    this.emit({ type: 'cancel_timer', name: 'stats' });
    this.emit({ type: 'cancel_timer', name: 'ice' });
    this.emit({ type: 'stop_peer' });
  }

  /** A getStats() reading of the current peer: report the playout delay. */
  onStats(snapshot) {
    const s = this.s;
    const current = snapshot && Number.isFinite(snapshot.delay) && Number.isFinite(snapshot.count) ? snapshot : null;
    const ms = playoutDelayMs(s.playout, current);
    if (current !== null) s.playout = Object.freeze({ delay: current.delay, count: current.count });
    if (ms !== null && s.peerState === 'connected') this.send({ type: 'playout_delay', ms });
  }

  sendOffer() {
    if (this.s.peerId !== null) this.emit({ type: 'send_offer', peer: this.s.peerId });
  }

  onPeerState(state) {
    const s = this.s;
    if (state === 'connected') {
      if (s.connectedAt === null) s.connectedAt = this.now;
      if (s.marks.connected === undefined) s.marks = Object.freeze({ ...s.marks, connected: this.now });
      s.peerRestarts = 0;
      this.emit({ type: 'cancel_timer', name: 'ice' });
      this.setUi('connected');
      this.emit({ type: 'start_interval', name: 'stats', ms: STATS_INTERVAL_MS });
    } else if (state === 'disconnected') {
      this.setUi('reconnecting');
    } else if (state === 'failed') {
      this.restartPeer();
    } else if (state === 'new' || state === 'connecting') {
      if (s.ui !== 'reconnecting' && s.ui !== 'joining') this.setUi('connecting');
    }
  }

  restartPeer() {
    const s = this.s;
    // Never connected in this join: no connection was lost; past the deadline, or
    // out of restarts, it is the network that blocks the call.
    if (s.connectedAt === null && (s.peerRestarts >= MAX_PEER_RESTARTS || (s.iceDeadline !== null && this.now >= s.iceDeadline))) {
      this.networkBlocked();
      return;
    }
    if (s.peerRestarts >= MAX_PEER_RESTARTS) {
      this.endCall('The connection was lost.');
      return;
    }
    s.peerRestarts += 1;
    this.setUi('reconnecting');
    if (s.ws !== null && s.participantId) {
      // The server answers a new offer on the same session (a renegotiation).
      this.startPeer();
      this.sendOffer();
    }
  }

  setMuted(muted, tellServer) {
    const s = this.s;
    s.muted = muted;
    this.emit({ type: 'mic_enabled', enabled: !muted });
    if (tellServer) {
      this.send({ type: 'control', action: 'mute', value: muted });
      this.announce(muted ? 'Microphone muted' : 'Microphone on');
    }
    if (s.participantId !== null && s.participants.some((p) => p.participant_id === s.participantId)) {
      this.onFlag(s.participantId, 'muted', muted);
    }
  }

  leaveAll() {
    const s = this.s;
    s.wantCall = false;
    s.awaitingMic = false;
    s.joinSent = false;
    s.participantId = null;
    s.iceDeadline = null;
    this.stopPeer();
    this.emit({ type: 'stop_mic' });
    this.closeSocket();
  }

  endCall(detail) {
    const s = this.s;
    const durationMs = s.connectedAt === null ? 0 : this.now - s.connectedAt;
    this.leaveAll();
    s.ended = Object.freeze({ detail, durationMs });
    this.setUi('ended');
  }

  // --- the network and the problem screen ---

  retry(displayName) {
    const s = this.s;
    const problem = s.problem === null ? null : s.problem.code;
    s.problem = null;
    s.retries = 0;
    if (MIC_PROBLEMS.has(problem)) this.joinCall(displayName);
    else this.connect();
  }

  wentOffline() {
    const s = this.s;
    s.online = false;
    s.netVisible = true;
    this.announce('You are offline');
    if (!s.wantCall && s.ui !== 'ended' && s.ui !== 'error' && s.ui !== 'home') {
      this.closeSocket();
      this.showProblem('offline');
    } else if (s.wantCall) {
      this.setUi('reconnecting');
    }
  }

  cameOnline() {
    const s = this.s;
    s.online = true;
    s.netVisible = false;
    this.announce('Back online');
    if (s.ui === 'offline' || (s.wantCall && s.ws === null)) {
      s.retries = 0;
      s.problem = null;
      this.connect();
    } else if (s.wantCall && s.peerId !== null) {
      // The blip may not have touched the media path: show what it says now.
      this.onPeerState(s.peerState);
    }
  }
}

/**
 * The TURN servers of a 'joined' event as RTCIceServer objects (urls, username,
 * credential), keeping only well-formed turn:/turns: entries.
 * @returns {readonly object[]}
 */
export function iceServerList(value) {
  const servers = [];
  for (const entry of Array.isArray(value) ? value : []) {
    if (!entry || typeof entry !== 'object') continue;
    const urls = (Array.isArray(entry.urls) ? entry.urls : [entry.urls]).filter(
      (url) => typeof url === 'string' && /^turns?:/.test(url),
    );
    if (urls.length === 0 || typeof entry.username !== 'string' || typeof entry.credential !== 'string') continue;
    servers.push(Object.freeze({ urls: Object.freeze(urls), username: entry.username, credential: entry.credential }));
  }
  return Object.freeze(servers);
}

function sameJson(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** LIST with P added or replaced (in place), or null when P is not a participant. */
function withParticipant(list, p, previous) {
  if (!p || typeof p !== 'object' || typeof p.participant_id !== 'string') return null;
  // Speaking is only sent on changes: keep what we know unless P says otherwise.
  const old = previous.find((x) => x.participant_id === p.participant_id);
  const speaking = typeof p.speaking === 'boolean' ? p.speaking : old !== undefined && old.speaking === true;
  const entry = Object.freeze({ ...p, speaking });
  const index = list.findIndex((x) => x.participant_id === p.participant_id);
  const next = [...list];
  if (index < 0) next.push(entry);
  else next[index] = entry;
  return Object.freeze(next);
}
