// BotCall PWA: the human side of a call.
//
// One page for every room: the room id comes from the path (/join/<room>) and
// the invite secret from the fragment (#invite=...), which browsers never send
// to a server. The page speaks JSON over the WebSocket /v1/signal/<room>:
// hello -> lobby, join -> joined, offer -> answer, then controls and events.
// Everything the server sends reaches the DOM through textContent, never as HTML.

import { Meter, meterFraction } from './audio.js?v=__BOTCALL_VERSION__';

const VERSION = '__BOTCALL_VERSION__';
const CONNECT_TIMEOUT_MS = 8000;
const PING_INTERVAL_MS = 15000;
const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];
const MAX_PEER_RESTARTS = 2;
const MAX_CHAT_LINES = 200;
const MAX_TEXT = 200;
const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } };

// Close codes of /v1/signal (docs: the signaling contract) and the problem each means.
const CLOSE_PROBLEMS = { 4401: 'invite_invalid', 4404: 'room_not_found', 4409: 'room_full', 4410: 'room_closed' };
const FATAL_ERRORS = new Set(['invite_invalid', 'room_not_found', 'room_full', 'room_closed']);
const ERROR_ALIASES = { room_expired: 'room_closed' };
const MIC_PROBLEMS = new Set(['mic_denied', 'mic_missing', 'mic_busy']);

const PROBLEMS = {
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
};

// UI state -> the screen that shows it.
const SCREEN_OF = {
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
};
const SCREENS = ['loading', 'home', 'lobby', 'call', 'ended', 'problem'];
const PILL_TEXT = { joining: 'Joining…', connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…' };
const ANNOUNCE = { lobby: 'Ready to join', connecting: 'Connecting', connected: 'Connected', reconnecting: 'Reconnecting', ended: 'Call ended' };

const $ = (id) => document.getElementById(id);

const call = {
  state: 'loading',
  problem: null,
  roomId: null,
  invite: null,
  ws: null,
  socketId: 0, // events of a replaced socket are ignored
  lobbyReceived: false,
  everConnected: false,
  pendingError: null,
  joinSent: false,
  wantCall: false, // the user clicked Join and has not hung up
  displayName: '',
  participants: new Map(),
  participantId: null,
  lobby: { max: null },
  stream: null,
  pc: null,
  sender: null,
  offer: null,
  attempt: 0,
  peerRestarts: 0,
  remoteStream: null,
  context: null,
  localMeter: null,
  remoteMeter: null,
  muted: false,
  connectedAt: null,
  retries: 0,
  unread: 0,
  timers: { connect: 0, ping: 0, retry: 0, clock: 0 },
  frame: 0,
  // performance.now() marks of the last join: click, mic, joined, answer, connected, audio.
  marks: {},
};

// --- small helpers ----------------------------------------------------------------

function text(value, fallback = '') {
  if (typeof value !== 'string' && typeof value !== 'number') return fallback;
  return String(value).slice(0, MAX_TEXT);
}

function el(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

function formatDuration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  const hours = Math.floor(total / 3600);
  const clock = `${pad(Math.floor((total % 3600) / 60))}:${pad(total % 60)}`;
  return hours ? `${hours}:${clock}` : clock;
}

function callDuration() {
  return call.connectedAt === null ? 0 : performance.now() - call.connectedAt;
}

function announce(message) {
  // Clearing first makes screen readers repeat a message that did not change.
  const region = $('announce');
  region.textContent = '';
  requestAnimationFrame(() => {
    region.textContent = message;
  });
}

function send(message) {
  const ws = call.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(message));
  return true;
}

// --- states and screens -----------------------------------------------------------------

function setState(state) {
  const previous = call.state;
  call.state = state;
  document.documentElement.dataset.state = state;
  const screen = SCREEN_OF[state];
  for (const name of SCREENS) $(`screen-${name}`).hidden = name !== screen;
  if (PILL_TEXT[state]) {
    $('conn').textContent = PILL_TEXT[state];
    $('conn').dataset.state = state;
  }
  if (screen === 'call') startTicking();
  else stopTicking();
  if (previous !== state) {
    if (SCREEN_OF[previous] !== screen && screen !== 'loading') {
      $(`screen-${screen}`).querySelector('h1').focus({ preventScroll: true });
    }
    if (ANNOUNCE[state]) announce(ANNOUNCE[state]);
  }
}

function showLoading(message) {
  $('loading-text').textContent = message;
  setState('loading');
}

function showProblem(code, message) {
  const problem = PROBLEMS[code] || PROBLEMS.failed;
  call.problem = code in PROBLEMS ? code : 'failed';
  $('problem-title').textContent = problem.title;
  $('problem-detail').textContent = message ? `${problem.detail} (${text(message)})` : problem.detail;
  const steps = $('problem-steps');
  steps.replaceChildren(...(problem.steps || []).map((step) => el('li', '', step)));
  steps.hidden = !problem.steps;
  $('retry').hidden = !problem.retry;
  setState(code === 'offline' || code === 'unreachable' ? 'offline' : 'error');
  announce(problem.title);
}

function showOffline() {
  $('net').hidden = false;
  if (call.wantCall) {
    // Keep the call on screen: the media path may survive a short outage.
    setState('reconnecting');
  } else {
    showProblem('offline');
  }
}

// --- the signaling socket -----------------------------------------------------------

function connect() {
  clearTimeout(call.timers.retry);
  closeSocket();
  if (!navigator.onLine) {
    showOffline();
    return;
  }
  if (call.wantCall) {
    if (call.state !== 'joining') setState('reconnecting');
  } else {
    showLoading(call.everConnected ? 'Reconnecting…' : 'Opening the call…');
  }
  const id = ++call.socketId;
  call.lobbyReceived = false;
  call.pendingError = null;
  call.joinSent = false;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}/v1/signal/${encodeURIComponent(call.roomId)}`);
  call.ws = ws;
  call.timers.connect = setTimeout(() => {
    if (id === call.socketId && !call.lobbyReceived) {
      closeSocket();
      socketLost({ code: 1006 });
    }
  }, CONNECT_TIMEOUT_MS);
  ws.onopen = () => {
    if (id !== call.socketId) return;
    // After a dropped socket, ask for our place in the call back (our session).
    const hello = { type: 'hello', invite: call.invite };
    if (call.wantCall && call.resume) hello.resume = call.resume;
    send(hello);
  };
  ws.onmessage = (event) => {
    if (id !== call.socketId || typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (err) {
      console.warn('BotCall: ignoring a frame that is not JSON', err);
      return;
    }
    if (message && typeof message.type === 'string') onMessage(message);
  };
  ws.onclose = (event) => {
    if (id === call.socketId) socketLost(event);
  };
}

function closeSocket(code = 1000) {
  clearTimeout(call.timers.connect);
  clearInterval(call.timers.ping);
  const ws = call.ws;
  call.ws = null;
  call.socketId++;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code);
}

function socketLost(event) {
  clearTimeout(call.timers.connect);
  clearInterval(call.timers.ping);
  call.ws = null;
  call.socketId++;
  const problem = call.pendingError || CLOSE_PROBLEMS[event.code];
  if (problem) {
    fatal(problem);
    return;
  }
  if (call.state === 'ended' || call.state === 'error') return;
  if (event.code === 4408) {
    endCall('Your time on this call ran out.');
  } else if (event.code === 4411) {
    endCall('You joined this call from another tab or device.');
  } else if (event.code === 1000 && call.wantCall && call.participantId) {
    endCall('The call ended.');
  } else {
    scheduleRetry();
  }
}

function scheduleRetry() {
  if (!navigator.onLine) {
    showOffline(); // the 'online' event reconnects
    return;
  }
  if (!call.everConnected) {
    showProblem('unreachable');
    return;
  }
  if (call.retries >= RETRY_DELAYS_MS.length) {
    if (call.wantCall) endCall('The connection was lost.');
    else showProblem('unreachable');
    return;
  }
  const delay = RETRY_DELAYS_MS[call.retries++];
  if (call.wantCall) setState('reconnecting');
  else showLoading('Reconnecting…');
  call.timers.retry = setTimeout(connect, delay);
}

function startPing() {
  clearInterval(call.timers.ping);
  call.timers.ping = setInterval(() => send({ type: 'ping' }), PING_INTERVAL_MS);
}

function onMessage(message) {
  switch (message.type) {
    case 'lobby':
      clearTimeout(call.timers.connect);
      call.lobbyReceived = true;
      call.everConnected = true;
      // A rejoin counts as recovered only once the join itself succeeds.
      if (!call.wantCall) call.retries = 0;
      call.lobby = { max: Number.isInteger(message.max_human_participants) ? message.max_human_participants : null };
      setParticipants(message.participants);
      startPing();
      if (call.wantCall && message.resumed === true) {
        call.joinSent = true; // the server resumed our session: 'joined' follows
        call.resuming = true;
      } else if (call.wantCall) {
        call.resume = null;
        sendJoin();
      } else {
        setState('lobby');
        setTimeout(prepareAudio, 0);
      }
      break;
    case 'joined':
    case 'welcome':
      if (!call.joinSent) break;
      call.participantId = text(message.participant_id, null);
      call.marks.joined = performance.now();
      call.retries = 0;
      // Only sessions with text_chat may send chat; everyone can read it.
      $('chat-form').hidden = !(message.you && message.you.capabilities && message.you.capabilities.text_chat === true);
      setParticipants([message.you, ...(Array.isArray(message.participants) ? message.participants : [])]);
      call.resume = typeof message.resume === 'string' ? message.resume : null;
      if (call.resuming) {
        call.resuming = false;
        // Media kept flowing over UDP while only the socket was down: keep it.
        if (message.media_connected === true && call.pc && call.pc.connectionState === 'connected') {
          setState('connected');
          break;
        }
        startPeer();
      }
      sendOffer();
      if (call.state === 'joining') setState('connecting');
      break;
    case 'answer':
      onAnswer(message.sdp);
      break;
    case 'participant_joined':
      if (upsert(message.participant)) {
        renderPeople();
        announce(`${nameOf(message.participant)} joined`);
      }
      break;
    case 'participant_left':
      onParticipantLeft(text(message.participant_id));
      break;
    case 'muted':
      onFlag(text(message.participant_id), 'muted', message.muted === true);
      break;
    case 'speaking':
      onFlag(text(message.participant_id), 'speaking', message.speaking === true);
      break;
    case 'chat':
      appendChat(text(message.participant_id), message.text);
      break;
    case 'room_closed':
      call.pendingError = 'room_closed';
      fatal('room_closed');
      break;
    case 'error':
      onError(text(message.code), text(message.message));
      break;
    default:
      break; // pong, and events this page does not use
  }
}

function onError(reported, message) {
  const code = ERROR_ALIASES[reported] || reported;
  if (FATAL_ERRORS.has(code)) {
    call.pendingError = code;
    fatal(code);
  } else if (code === 'bad_offer') {
    leaveAll();
    showProblem('failed', message);
  } else if (message) {
    announce(message);
    if (code === 'chat_disabled' || code === 'rate_limited') appendNote(message);
  }
}

function fatal(code) {
  if (call.state === 'ended' || (call.state === 'error' && call.problem === code)) return;
  if (code === 'room_closed' && call.wantCall) {
    endCall('The call was closed.');
    return;
  }
  if (code === 'room_full' && call.wantCall && call.state === 'reconnecting') {
    // Rejoining after a dropped socket: our old place is held until the server
    // notices the drop, so keep retrying for a while instead of giving up.
    call.pendingError = null;
    closeSocket();
    scheduleRetry();
    return;
  }
  leaveAll();
  showProblem(code);
}

// --- participants -------------------------------------------------------------------------

function nameOf(p) {
  if (!p || typeof p !== 'object') return 'Someone';
  return text(p.display_name) || text(p.agent_id) || 'Guest';
}

function upsert(p, previous = call.participants) {
  if (!p || typeof p !== 'object' || typeof p.participant_id !== 'string') return false;
  // Speaking is only sent on changes: keep what we know unless P says otherwise.
  const old = previous.get(p.participant_id);
  const speaking = typeof p.speaking === 'boolean' ? p.speaking : old !== undefined && old.speaking === true;
  call.participants.set(p.participant_id, { ...p, speaking });
  return true;
}

function setParticipants(list) {
  const previous = new Map(call.participants);
  call.participants.clear();
  for (const p of Array.isArray(list) ? list : []) upsert(p, previous);
  renderPeople();
}

function onParticipantLeft(id) {
  const p = call.participants.get(id);
  if (id && id === call.participantId) {
    endCall('You left the call.');
    return;
  }
  if (call.participants.delete(id)) {
    renderPeople();
    announce(`${nameOf(p)} left`);
  }
}

function onFlag(id, flag, value) {
  const p = call.participants.get(id);
  if (!p) return;
  p[flag] = value;
  if (flag === 'muted' && id === call.participantId && value !== call.muted) setMuted(value, false);
  const item = document.querySelectorAll(`li[data-participant-id="${CSS.escape(id)}"]`);
  for (const li of item) fillStatus(li, p);
}

function fillStatus(li, p) {
  li.dataset.speaking = String(p.speaking === true);
  li.dataset.muted = String(p.muted === true);
  const status = li.querySelector('.status');
  status.textContent = p.muted === true ? 'Muted' : p.speaking === true ? 'Speaking' : '';
}

function personItem(p) {
  const bot = p.kind === 'bot';
  const li = el('li', 'person');
  li.dataset.kind = bot ? 'bot' : 'human';
  li.dataset.participantId = p.participant_id;
  const head = el('div', 'person-head');
  head.append(el('span', 'avatar', nameOf(p).slice(0, 1).toUpperCase()));
  head.append(el('span', 'name', nameOf(p)));
  if (p.participant_id === call.participantId) head.append(el('span', 'tag', 'You'));
  if (bot) head.append(el('span', 'tag verified', 'Verified bot'));
  head.append(el('span', 'status'));
  head.firstChild.setAttribute('aria-hidden', 'true');
  li.append(head);
  if (bot) {
    const identity = el('div', 'identity');
    identity.append(el('p', 'agent', text(p.agent_id)));
    const behalf = el('p', '', 'on behalf of ');
    behalf.append(el('strong', '', text(p.controller, 'unknown')));
    identity.append(behalf);
    identity.append(el('p', 'small', `Issuer: ${text(p.issuer, 'unknown')}`));
    const scopes = Array.isArray(p.scopes) ? p.scopes.map((s) => text(s)).join(', ') : '';
    identity.append(el('p', 'small', `Scopes: ${scopes || 'none'}`));
    li.append(identity);
  }
  fillStatus(li, p);
  return li;
}

function renderPeople() {
  const people = [...call.participants.values()];
  // You first, then bots, then the other people.
  const rank = (p) => (p.participant_id === call.participantId ? 0 : p.kind === 'bot' ? 1 : 2);
  people.sort((a, b) => rank(a) - rank(b));
  for (const id of ['lobby-people', 'call-people']) $(id).replaceChildren(...people.map(personItem));
  const bots = people.filter((p) => p.kind === 'bot').length;
  const humans = people.length - bots;
  let summary = people.length === 0 ? 'Nobody is on the call yet.' : `${bots} ${bots === 1 ? 'bot' : 'bots'} and ${humans} ${humans === 1 ? 'person' : 'people'} on the call.`;
  if (call.lobby.max !== null) summary += ` Room for ${call.lobby.max} ${call.lobby.max === 1 ? 'person' : 'people'}.`;
  $('lobby-summary').textContent = summary;
}

// --- chat -----------------------------------------------------------------------------------

function appendLine(item) {
  const log = $('chat-log');
  log.append(item);
  while (log.childElementCount > MAX_CHAT_LINES) log.firstElementChild.remove();
  if (!$('chat').open) {
    call.unread++;
    $('chat-unread').textContent = String(call.unread);
    $('chat-unread').hidden = false;
  }
}

function appendChat(id, body) {
  if (typeof body !== 'string') return;
  const item = el('li');
  const who = id === call.participantId ? 'You' : nameOf(call.participants.get(id));
  item.append(el('strong', '', `${who}: `), el('span', '', body.slice(0, 4000)));
  appendLine(item);
}

function appendNote(message) {
  appendLine(el('li', 'note', message));
}

// --- joining, media -------------------------------------------------------------------------

function prepareAudio() {
  // Creating an AudioContext can take ~100 ms, so the lobby makes it ahead of
  // the click; it stays suspended until unlockAudio resumes it.
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!call.context && Context) call.context = new Context({ latencyHint: 'interactive' });
}

function unlockAudio() {
  // iOS Safari lets audio start only inside a user gesture: resume the
  // AudioContext and start the <audio> element here, in the click handler.
  prepareAudio();
  if (call.context && call.context.state !== 'running') {
    call.context.resume().catch((err) => console.warn('BotCall: AudioContext not resumed', err));
  }
  const audio = $('remote-audio');
  if (!audio.srcObject) audio.srcObject = new MediaStream();
  audio.play().catch((err) => console.warn('BotCall: audio element not started yet', err));
}

function micProblem(err) {
  const name = err && err.name;
  if (name === 'NotAllowedError' || name === 'SecurityError') return 'mic_denied';
  if (name === 'NotFoundError' || name === 'OverconstrainedError') return 'mic_missing';
  if (name === 'NotReadableError' || name === 'AbortError') return 'mic_busy';
  return 'failed';
}

async function joinCall() {
  if (call.state === 'joining') return;
  if (!window.isSecureContext) {
    showProblem('insecure');
    return;
  }
  if (!window.RTCPeerConnection || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showProblem('no_webrtc');
    return;
  }
  const attempt = ++call.attempt;
  call.marks = { click: performance.now() };
  call.displayName = $('display-name').value.trim();
  call.connectedAt = null;
  call.peerRestarts = 0;
  call.muted = false;
  stopMic();
  setState('joining');
  // The join, the offer and the connection proceed while the browser asks for
  // the microphone: the track is attached when it arrives, so the time to the
  // first audio does not include the permission prompt. The join goes first:
  // creating the AudioContext can hold the main thread for tens of ms.
  call.wantCall = true;
  if (call.ws && call.lobbyReceived) sendJoin();
  else connect();
  unlockAudio();
  const microphone = navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  let stream;
  try {
    stream = await microphone;
  } catch (err) {
    if (attempt !== call.attempt) return;
    const problem = micProblem(err);
    send({ type: 'control', action: 'leave' });
    leaveAll();
    showProblem(problem, problem === 'failed' ? err && err.message : '');
    return;
  }
  if (attempt !== call.attempt || !call.wantCall) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  call.marks.mic = performance.now();
  call.stream = stream;
  call.localMeter = makeMeter(stream, 2048);
  setMuted(call.muted, false);
  attachMicrophone();
}

function attachMicrophone() {
  const track = call.stream ? call.stream.getAudioTracks()[0] : null;
  if (!call.sender || !track) return;
  // replaceTrack needs no renegotiation: the transceiver was offered as sendrecv.
  call.sender.replaceTrack(track).catch((err) => console.warn('BotCall: microphone not attached', err));
  if (call.sender.setStreams) call.sender.setStreams(call.stream);
}

function sendJoin() {
  call.joinSent = true;
  call.participantId = null;
  send({ type: 'join', display_name: call.displayName });
  // Build the offer while the server answers the join: it is sent on 'joined'.
  startPeer();
}

function startPeer() {
  stopPeer();
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
  call.pc = pc;
  call.sender = pc.addTransceiver('audio', { direction: 'sendrecv' }).sender;
  attachMicrophone();
  pc.ontrack = (event) => {
    if (pc === call.pc) onRemoteTrack(event);
  };
  pc.onconnectionstatechange = () => {
    if (pc === call.pc) onPeerState(pc.connectionState);
  };
  // No trickle: the server is ICE-lite and learns our address from our STUN
  // checks, so the offer goes out as soon as setLocalDescription resolves.
  call.offer = pc
    .createOffer()
    .then((offer) => pc.setLocalDescription(offer))
    .then(() => pc.localDescription.sdp);
  call.offer.catch((err) => console.warn('BotCall: offer failed', err));
}

async function sendOffer() {
  const pc = call.pc;
  if (!pc || !call.offer) return;
  let sdp;
  try {
    sdp = await call.offer;
  } catch (err) {
    leaveAll();
    showProblem('failed', err && err.message);
    return;
  }
  if (pc === call.pc) send({ type: 'offer', sdp });
}

function onAnswer(sdp) {
  const pc = call.pc;
  if (!pc || typeof sdp !== 'string' || pc.signalingState !== 'have-local-offer') return;
  call.marks.answer = performance.now();
  pc.setRemoteDescription({ type: 'answer', sdp }).catch((err) => {
    if (pc !== call.pc) return;
    leaveAll();
    showProblem('failed', err && err.message);
  });
}

function makeMeter(stream, fftSize) {
  if (!call.context || stream.getAudioTracks().length === 0) return null;
  return new Meter(call.context, stream, fftSize);
}

function onRemoteTrack(event) {
  const stream = event.streams[0] || new MediaStream([event.track]);
  call.remoteStream = stream;
  const audio = $('remote-audio');
  audio.srcObject = stream;
  audio.play().catch(() => {
    // Autoplay refused (no gesture on record): the next tap starts it.
    announce('Tap the page to hear the call');
    document.addEventListener('pointerdown', () => audio.play(), { once: true });
  });
  // Chromium feeds a remote track to WebAudio only while an element plays it (above).
  if (call.remoteMeter) call.remoteMeter.disconnect();
  call.remoteMeter = makeMeter(stream, 8192);
}

function onPeerState(state) {
  if (state === 'connected') {
    if (call.connectedAt === null) call.connectedAt = performance.now();
    if (call.marks.connected === undefined) call.marks.connected = performance.now();
    call.peerRestarts = 0;
    setState('connected');
  } else if (state === 'disconnected') {
    setState('reconnecting');
  } else if (state === 'failed') {
    restartPeer();
  } else if (state === 'new' || state === 'connecting') {
    if (call.state !== 'reconnecting' && call.state !== 'joining') setState('connecting');
  }
}

function restartPeer() {
  if (call.peerRestarts >= MAX_PEER_RESTARTS) {
    endCall('The connection was lost.');
    return;
  }
  call.peerRestarts++;
  setState('reconnecting');
  if (call.ws && call.participantId) {
    // The server answers a new offer on the same session (a renegotiation).
    startPeer();
    sendOffer();
  }
}

function setMuted(muted, tellServer) {
  call.muted = muted;
  for (const track of call.stream ? call.stream.getAudioTracks() : []) track.enabled = !muted;
  $('mute').setAttribute('aria-pressed', String(muted));
  if (tellServer) {
    send({ type: 'control', action: 'mute', value: muted });
    announce(muted ? 'Microphone muted' : 'Microphone on');
  }
  const me = call.participants.get(call.participantId);
  if (me) onFlag(me.participant_id, 'muted', muted);
}

function stopPeer() {
  if (call.pc) {
    call.pc.ontrack = null;
    call.pc.onconnectionstatechange = null;
    call.pc.close();
  }
  call.pc = null;
  call.sender = null;
  call.offer = null;
  if (call.remoteMeter) call.remoteMeter.disconnect();
  call.remoteMeter = null;
  call.remoteStream = null;
  $('remote-audio').srcObject = null;
}

function stopMic() {
  if (call.localMeter) call.localMeter.disconnect();
  call.localMeter = null;
  for (const track of call.stream ? call.stream.getTracks() : []) track.stop();
  call.stream = null;
}

function leaveAll() {
  call.wantCall = false;
  call.joinSent = false;
  call.participantId = null;
  stopPeer();
  stopMic();
  closeSocket();
}

function endCall(detail) {
  const duration = callDuration();
  leaveAll();
  $('ended-detail').textContent = detail;
  $('ended-duration').textContent = formatDuration(duration);
  setState('ended');
}

function hangUp() {
  send({ type: 'control', action: 'leave' });
  endCall('You hung up.');
}

// --- the in-call clock and meters -----------------------------------------------------------

function drawMeters() {
  call.frame = requestAnimationFrame(drawMeters);
  const local = call.localMeter ? call.localMeter.level() : -Infinity;
  const remote = call.remoteMeter ? call.remoteMeter.level() : -Infinity;
  if (call.marks.audio === undefined && remote > -70) call.marks.audio = performance.now();
  $('meter-local').style.transform = `scaleX(${meterFraction(local)})`;
  $('meter-remote').style.transform = `scaleX(${meterFraction(remote)})`;
}

function tick() {
  $('duration').textContent = formatDuration(callDuration());
}

function startTicking() {
  if (call.timers.clock) return;
  tick();
  call.timers.clock = setInterval(tick, 1000);
  call.frame = requestAnimationFrame(drawMeters);
}

function stopTicking() {
  clearInterval(call.timers.clock);
  call.timers.clock = 0;
  cancelAnimationFrame(call.frame);
}

// --- start-up -------------------------------------------------------------------------------

function inviteTarget(value) {
  let url;
  try {
    url = new URL(value.trim(), location.href);
  } catch {
    return null;
  }
  if (!/^\/join\/[^/]+\/?$/.test(url.pathname) || !url.hash.startsWith('#invite=')) return null;
  return url.pathname + url.hash; // stay on this server
}

function retry() {
  const problem = call.problem;
  call.problem = null;
  call.retries = 0;
  if (MIC_PROBLEMS.has(problem)) joinCall();
  else connect();
}

function wire() {
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    joinCall();
  });
  $('rejoin').addEventListener('click', () => joinCall());
  $('retry').addEventListener('click', retry);
  $('mute').addEventListener('click', () => setMuted(!call.muted, true));
  $('hangup').addEventListener('click', hangUp);
  $('chat').addEventListener('toggle', () => {
    if (!$('chat').open) return;
    call.unread = 0;
    $('chat-unread').hidden = true;
  });
  $('chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const body = $('chat-text').value.trim();
    if (body && send({ type: 'chat', text: body })) {
      appendChat(call.participantId, body);
      $('chat-text').value = '';
    }
  });
  $('home-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const target = inviteTarget($('home-link').value);
    $('home-error').hidden = target !== null;
    if (target) location.assign(target);
  });
  window.addEventListener('hashchange', () => location.reload());
  window.addEventListener('offline', () => {
    $('net').hidden = false;
    announce('You are offline');
    if (!call.wantCall && call.state !== 'ended' && call.state !== 'error' && call.state !== 'home') {
      closeSocket();
      showProblem('offline');
    } else if (call.wantCall) {
      setState('reconnecting');
    }
  });
  window.addEventListener('online', () => {
    $('net').hidden = true;
    announce('Back online');
    if (call.state === 'offline' || (call.wantCall && !call.ws)) {
      call.retries = 0;
      call.problem = null;
      connect();
    } else if (call.wantCall && call.pc) {
      // The blip may not have touched the media path: show what it says now.
      onPeerState(call.pc.connectionState);
    }
  });
  window.addEventListener('pagehide', () => {
    if (call.wantCall) send({ type: 'control', action: 'leave' });
  });
}

function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker
    .register('/sw.js', { scope: '/' })
    .catch((err) => console.warn('BotCall: service worker not registered', err));
}

// Read-only hooks for tests and debugging (the end-to-end tests read these).
const hooks = Object.freeze({
  version: VERSION,
  get state() {
    return call.state;
  },
  get problem() {
    return call.problem;
  },
  get participantId() {
    return call.participantId;
  },
  get participants() {
    return [...call.participants.values()].map((p) => ({ ...p }));
  },
  get muted() {
    return call.muted;
  },
  get pc() {
    return call.pc;
  },
  get remoteStream() {
    return call.remoteStream;
  },
  get localStream() {
    return call.stream;
  },
  get marks() {
    return { ...call.marks };
  },
  remoteFrequency: () => (call.remoteMeter ? call.remoteMeter.frequency() : null),
  remoteLevel: () => (call.remoteMeter ? call.remoteMeter.level() : -Infinity),
  localLevel: () => (call.localMeter ? call.localMeter.level() : -Infinity),
});
Object.defineProperty(window, 'botcall', { value: hooks, writable: false, configurable: false });

function start() {
  wire();
  registerServiceWorker();
  $('net').hidden = navigator.onLine;
  const match = /^\/join\/([^/]+)\/?$/.exec(location.pathname);
  if (!match) {
    setState('home');
    return;
  }
  try {
    call.roomId = decodeURIComponent(match[1]);
  } catch {
    call.roomId = match[1];
  }
  call.invite = new URLSearchParams(location.hash.slice(1)).get('invite');
  if (!call.invite) {
    showProblem('invite_missing');
    return;
  }
  connect();
}

start();
