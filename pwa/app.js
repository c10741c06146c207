// BotCall PWA: the human side of a call.
//
// One page for every room: the room id comes from the path (/join/<room>) and
// the invite secret from the fragment (#invite=...), which browsers never send
// to a server. The page speaks JSON over the WebSocket /v1/signal/<room>:
// hello -> lobby, join -> joined, offer -> answer, then controls and events.
//
// This file is the shell: it owns the socket, the timers, the microphone and
// the peer connection, feeds their events to the state machine (session.js),
// carries out the effects it returns and renders each new state (view.js).

import { CallAudio, MIC_CONSTRAINTS, Peer } from './peer.js?v=__BOTCALL_VERSION__';
import { initialState, parseLocation, playoutSnapshot, reduce } from './session.js?v=__BOTCALL_VERSION__';
import { View } from './view.js?v=__BOTCALL_VERSION__';

const VERSION = '__BOTCALL_VERSION__';

const location_ = parseLocation(location.pathname, location.hash);
let state = initialState({
  roomId: location_.roomId,
  invite: location_.invite,
  online: navigator.onLine,
  secure: window.isSecureContext,
  webrtc: !!(window.RTCPeerConnection && navigator.mediaDevices && navigator.mediaDevices.getUserMedia),
});

const audio = new CallAudio(document.getElementById('remote-audio'));
const view = new View({ levels: () => audio.levels(), onAudioHeard: () => dispatch({ type: 'audio_heard' }) });

let ws = null;
let socketId = 0;
let peer = null;
let peerId = null;
let stream = null; // the microphone
const pendingMics = new Map(); // attempt -> a stream not yet used or dropped
const timers = new Map();

// --- the dispatch loop -------------------------------------------------------------

const queue = [];
let dispatching = false;

function dispatch(input) {
  queue.push({ now: performance.now(), online: navigator.onLine, ...input });
  if (dispatching) return; // an effect dispatched: handled after the current step
  dispatching = true;
  try {
    while (queue.length > 0) {
      const step = reduce(state, queue.shift());
      state = step.state;
      view.render(state);
      for (const effect of step.effects) perform(effect);
    }
  } finally {
    dispatching = false;
  }
}

function perform(effect) {
  switch (effect.type) {
    case 'send':
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(effect.message));
      break;
    case 'open_socket':
      openSocket(effect.socket, effect.roomId);
      break;
    case 'close_socket':
      closeSocket(effect.code);
      break;
    case 'start_timer':
    case 'start_interval': {
      cancelTimer(effect.name);
      const fire = () => dispatch({ type: 'timer', name: effect.name });
      const repeat = effect.type === 'start_interval';
      timers.set(effect.name, { repeat, handle: repeat ? setInterval(fire, effect.ms) : setTimeout(fire, effect.ms) });
      break;
    }
    case 'cancel_timer':
      cancelTimer(effect.name);
      break;
    case 'start_peer':
      startPeer(effect.peer, effect.iceServers, effect.receiveTracks);
      break;
    case 'stop_peer':
      stopPeer();
      break;
    case 'send_offer':
      sendOffer(effect.peer);
      break;
    case 'apply_answer':
      applyAnswer(effect.peer, effect.sdp);
      break;
    case 'read_stats':
      readStats(effect.peer);
      break;
    case 'open_mic':
      openMic(effect.attempt);
      break;
    case 'use_mic':
      stream = pendingMics.get(effect.attempt) || null;
      pendingMics.delete(effect.attempt);
      audio.setLocal(stream);
      if (peer) peer.attachMicrophone(stream);
      break;
    case 'drop_mic':
      for (const track of pendingMics.get(effect.attempt)?.getTracks() || []) track.stop();
      pendingMics.delete(effect.attempt);
      break;
    case 'stop_mic':
      audio.setLocal(null);
      for (const track of stream ? stream.getTracks() : []) track.stop();
      stream = null;
      break;
    case 'mic_enabled':
      for (const track of stream ? stream.getAudioTracks() : []) track.enabled = effect.enabled;
      break;
    case 'prepare_audio':
      setTimeout(() => audio.prepare(), 0);
      warmMicrophone();
      break;
    case 'unlock_audio':
      audio.unlock();
      break;
    case 'announce':
      view.announce(effect.text);
      break;
    case 'focus':
      view.focus(effect.screen);
      break;
    case 'clear_chat_input':
      view.clearChatInput();
      break;
    default:
      console.warn('BotCall: unknown effect', effect.type);
  }
}

function cancelTimer(name) {
  const timer = timers.get(name);
  if (!timer) return;
  if (timer.repeat) clearInterval(timer.handle);
  else clearTimeout(timer.handle);
  timers.delete(name);
}

// --- the signaling socket -----------------------------------------------------------

function openSocket(id, roomId) {
  socketId = id;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/v1/signal/${encodeURIComponent(roomId)}`);
  ws = socket;
  socket.onopen = () => {
    if (socket === ws) dispatch({ type: 'socket_open', socket: id });
  };
  socket.onmessage = (event) => {
    if (socket !== ws || typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (err) {
      console.warn('BotCall: ignoring a frame that is not JSON', err);
      return;
    }
    if (message && typeof message.type === 'string') dispatch({ type: 'message', socket: id, message });
  };
  socket.onclose = (event) => {
    if (socket === ws) {
      ws = null;
      dispatch({ type: 'socket_closed', socket: id, code: event.code });
    }
  };
}

function closeSocket(code) {
  const socket = ws;
  ws = null;
  if (socket && socket.readyState <= WebSocket.OPEN) socket.close(code);
}

// --- the peer connection and the microphone ------------------------------------------

function startPeer(id, iceServers, receiveTracks) {
  stopPeer();
  const created = new Peer({
    iceServers,
    receiveTracks,
    onTrack: (event) => {
      if (created === peer) audio.playRemote(event, () => view.announce('Tap the page to hear the call'));
    },
    onConnectionState: (connectionState) => {
      if (created === peer) dispatch({ type: 'peer_state', peer: id, state: connectionState });
    },
    onGathered: (count) => {
      if (created === peer) dispatch({ type: 'ice_gathered', peer: id, count });
    },
    // A renegotiation (negotiationneeded, or the renegotiate hook): sent like the first offer.
    onOffer: (sdp) => {
      if (created === peer) dispatch({ type: 'offer_ready', peer: id, sdp });
    },
  });
  peer = created;
  peerId = id;
  created.attachMicrophone(stream);
}

function stopPeer() {
  if (peer) peer.close();
  peer = null;
  peerId = null;
  audio.stopRemote();
}

async function sendOffer(id) {
  if (!peer || peerId !== id) return;
  let sdp;
  try {
    sdp = await peer.offer;
  } catch (err) {
    dispatch({ type: 'offer_failed', peer: id, message: err && err.message });
    return;
  }
  dispatch({ type: 'offer_ready', peer: id, sdp });
}

function applyAnswer(id, sdp) {
  if (!peer || peerId !== id) return;
  const applying = peer.applyAnswer(sdp);
  if (applying === null) return;
  dispatch({ type: 'answer_applying', peer: id });
  applying.catch((err) => dispatch({ type: 'answer_failed', peer: id, message: err && err.message }));
}

async function readStats(id) {
  if (!peer || peerId !== id) return;
  let stats;
  try {
    stats = await peer.stats();
  } catch (err) {
    console.warn('BotCall: getStats failed', err);
    return; // the next tick tries again
  }
  dispatch({ type: 'stats', peer: id, snapshot: playoutSnapshot(stats) });
}

// The lobby opens the microphone when the site may already use it (a returning
// person who allowed it), as a call app's device check does, and the first Join
// takes that stream. With no microphone open before the call, Chromium's audio
// output started 100-300 ms after the first packets in most calls measured; its
// jitter buffer kept that backlog for seconds, and the bot's first words reached
// the ear 100-300 ms late. With it open, the output started with the first
// packets in every call (docs/bench-results.md §16i). Only once per page: after
// a hang-up the microphone stays off. The permission's state goes to the session
// too: on a first visit ('prompt') the join waits for the microphone.
let warmMic = null; // Promise<MediaStream|null>
let warmTried = false;
let warmClaimed = false; // a join asked for the microphone: the lobby opens none after that

async function warmMicrophone() {
  if (warmTried || !navigator.permissions || typeof navigator.permissions.query !== 'function') return;
  warmTried = true;
  let status;
  try {
    status = await navigator.permissions.query({ name: 'microphone' });
  } catch (err) {
    return; // a browser that cannot tell: the Join click asks, as before
  }
  dispatch({ type: 'mic_permission', state: status.state });
  if (status.state !== 'granted' || warmClaimed) return;
  warmMic = navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS).catch(() => null);
  const ready = await warmMic;
  const note = document.getElementById('lobby-mic');
  if (ready && note && warmMic !== null) note.textContent = 'Your microphone is on and ready.';
}

/** The lobby's stream, once, if it is still live; null otherwise. */
async function takeWarmMic() {
  warmClaimed = true;
  const pending = warmMic;
  warmMic = null;
  const ready = pending ? await pending : null;
  if (ready && ready.getAudioTracks().some((track) => track.readyState === 'live')) return ready;
  for (const track of ready ? ready.getTracks() : []) track.stop();
  return null;
}

async function openMic(attempt) {
  let granted = await takeWarmMic();
  try {
    if (granted === null) granted = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  } catch (err) {
    dispatch({ type: 'mic_failed', attempt, name: err && err.name, message: err && err.message });
    return;
  }
  pendingMics.set(attempt, granted);
  dispatch({ type: 'mic_ready', attempt });
}

// --- start-up -------------------------------------------------------------------------

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
    return state.ui;
  },
  get problem() {
    return state.problem === null ? null : state.problem.code;
  },
  get participantId() {
    return state.participantId;
  },
  get participants() {
    return state.participants.map((p) => ({ ...p }));
  },
  get muted() {
    return state.muted;
  },
  get pc() {
    return peer ? peer.pc : null;
  },
  get remoteStream() {
    return audio.remoteStream;
  },
  // Group calls: how many remote tracks are playing (one <audio> element each).
  get remoteTracks() {
    return audio.remoteTracks.length;
  },
  get localStream() {
    return stream;
  },
  get marks() {
    return { ...state.marks };
  },
  remoteFrequency: () => (audio.remoteMeter ? audio.remoteMeter.frequency() : null),
  remoteLevel: () => (audio.remoteMeter ? audio.remoteMeter.level() : -Infinity),
  localLevel: () => (audio.localMeter ? audio.localMeter.level() : -Infinity),
  // Tests and benches: record the microphone and the remote audio (pwa/recorder-worklet.js).
  startRecording: () => audio.startRecording(stream).then(() => true),
  // Tests: offer again on the live connection through the page's own signaling
  // (after pc.restartIce() or pc.addTransceiver() negotiationneeded does it too).
  renegotiate: () => (peer ? peer.renegotiate() : Promise.resolve(false)),
  recording: () => (audio.recorder ? audio.recorder.take() : null),
});
Object.defineProperty(window, 'botcall', { value: hooks, writable: false, configurable: false });

view.bind(dispatch);
window.addEventListener('hashchange', () => location.reload());
window.addEventListener('offline', () => dispatch({ type: 'offline' }));
window.addEventListener('online', () => dispatch({ type: 'online' }));
window.addEventListener('pagehide', () => dispatch({ type: 'page_hide' }));
registerServiceWorker();
dispatch({ type: 'start' });
