// BotCall PWA: the media side. One RTCPeerConnection per call attempt (Peer) and the
// page's audio (CallAudio: the AudioContext, the remote <audio> element, meters).
// No call logic here: app.js tells these what to do and forwards their events
// to the state machine in session.js.

import { Meter, Recorder } from './audio.js?v=__BOTCALL_VERSION__';

export const MIC_CONSTRAINTS = Object.freeze({ audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } });

/**
 * One RTCPeerConnection with a single sendrecv audio transceiver, offered without trickle.
 *
 * Once the first answer is applied, whatever makes the connection need a new
 * offer (negotiationneeded: an added transceiver, restartIce(), a direction
 * change) is offered again on the same connection through `onOffer`; the
 * server keeps the DTLS session and the audio (docs/protocol.md, renegotiation).
 */
export class Peer {
  /**
   * @param {object} handlers
   * @param {(event: RTCTrackEvent) => void} handlers.onTrack a remote track arrived
   * @param {(state: string) => void} handlers.onConnectionState connectionState changed
   * @param {(sdp: string) => void} [handlers.onOffer] a renegotiation's offer is ready to send
   * @param {RTCIceServer[]} [handlers.iceServers] TURN servers from the 'joined' event
   * @param {(count: number) => void} [handlers.onGathered] ICE gathering completed with `count` candidates
   */
  constructor({ onTrack, onConnectionState, onOffer, iceServers, onGathered }) {
    const pc = new RTCPeerConnection({
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
      iceServers: Array.isArray(iceServers) ? iceServers.map((server) => ({ ...server, urls: [...server.urls] })) : [],
    });
    this.pc = pc;
    this.onOffer = onOffer || null;
    this.answered = false; // the first answer is applied: later offers are renegotiations
    this.sender = pc.addTransceiver('audio', { direction: 'sendrecv' }).sender;
    pc.ontrack = (event) => onTrack(event);
    pc.onconnectionstatechange = () => onConnectionState(pc.connectionState);
    // Candidates are not signaled (the server learns addresses from our checks), only
    // counted: none at all means this network leaves no path for a call.
    let gathered = 0;
    pc.onicecandidate = (event) => {
      if (event.candidate && event.candidate.candidate) gathered += 1;
    };
    pc.onicegatheringstatechange = () => {
      if (pc.iceGatheringState === 'gathering') gathered = 0;
      else if (pc.iceGatheringState === 'complete' && onGathered) onGathered(gathered);
    };
    pc.onnegotiationneeded = () => {
      // Before the first answer the initial offer covers it; while an offer is
      // out the browser fires again once the connection is stable, if still needed.
      if (this.answered && pc.signalingState === 'stable') this.renegotiate();
    };
    // No trickle: the server is ICE-lite and learns our address from our STUN
    // checks, so the offer goes out as soon as setLocalDescription resolves.
    this.offer = pc
      .createOffer()
      .then((offer) => pc.setLocalDescription(offer))
      .then(() => pc.localDescription.sdp);
    this.offer.catch((err) => console.warn('BotCall: offer failed', err));
  }

  /**
   * Offer again on this connection (the same offer when nothing changed) and hand it to `onOffer`.
   * @returns {Promise<boolean>} whether an offer went to `onOffer`
   */
  async renegotiate() {
    const pc = this.pc;
    if (!this.answered || pc.signalingState !== 'stable' || !this.onOffer) return false;
    try {
      await pc.setLocalDescription(await pc.createOffer());
    } catch (err) {
      console.warn('BotCall: renegotiation offer failed', err);
      return false;
    }
    if (pc.signalingState !== 'have-local-offer') return false; // closed meanwhile
    this.onOffer(pc.localDescription.sdp);
    return true;
  }

  /** Send the microphone's first audio track (replaceTrack: no renegotiation, the transceiver is sendrecv). */
  attachMicrophone(stream) {
    const track = stream ? stream.getAudioTracks()[0] : null;
    if (!track) return;
    this.sender.replaceTrack(track).catch((err) => console.warn('BotCall: microphone not attached', err));
    if (this.sender.setStreams) this.sender.setStreams(stream);
  }

  /**
   * Apply the server's answer, if this connection is waiting for one.
   * @returns {Promise<void>|null} null when the answer was not applied
   */
  applyAnswer(sdp) {
    if (typeof sdp !== 'string' || this.pc.signalingState !== 'have-local-offer') return null;
    return this.pc.setRemoteDescription({ type: 'answer', sdp }).then(() => {
      this.answered = true;
    });
  }

  /**
   * The connection's statistics, as plain objects.
   * @returns {Promise<object[]>} RTCStatsReport.values(); rejects when the connection is closed
   */
  async stats() {
    const report = await this.pc.getStats();
    return Array.from(report.values());
  }

  close() {
    this.pc.ontrack = null;
    this.pc.onconnectionstatechange = null;
    this.pc.onicecandidate = null;
    this.pc.onicegatheringstatechange = null;
    this.pc.onnegotiationneeded = null;
    this.pc.close();
  }
}

/** The AudioContext, the remote <audio> element and the level meters. */
export class CallAudio {
  /** @param {HTMLAudioElement} element the page's remote-audio element */
  constructor(element) {
    this.element = element;
    this.context = null;
    this.localMeter = null;
    this.remoteMeter = null;
    this.remoteStream = null;
    this.recorder = null;
  }

  prepare() {
    // Creating an AudioContext can take ~100 ms, so the lobby makes it ahead of
    // the click; it stays suspended until unlock resumes it.
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!this.context && Context) this.context = new Context({ latencyHint: 'interactive' });
  }

  unlock() {
    // iOS Safari lets audio start only inside a user gesture: resume the
    // AudioContext and start the <audio> element here, in the click handler.
    this.prepare();
    if (this.context && this.context.state !== 'running') {
      this.context.resume().catch((err) => console.warn('BotCall: AudioContext not resumed', err));
    }
    const audio = this.element;
    if (!audio.srcObject) audio.srcObject = new MediaStream();
    audio.play().catch((err) => console.warn('BotCall: audio element not started yet', err));
  }

  meter(stream, fftSize) {
    if (!this.context || stream.getAudioTracks().length === 0) return null;
    return new Meter(this.context, stream, fftSize);
  }

  /** Meter the microphone (null stops metering it). */
  setLocal(stream) {
    if (this.localMeter) this.localMeter.disconnect();
    this.localMeter = stream ? this.meter(stream, 2048) : null;
  }

  /**
   * Play and meter a remote track.
   * @param {RTCTrackEvent} event
   * @param {() => void} onBlocked autoplay was refused; the next tap starts the audio
   */
  playRemote(event, onBlocked) {
    const stream = event.streams[0] || new MediaStream([event.track]);
    this.remoteStream = stream;
    const audio = this.element;
    audio.srcObject = stream;
    audio.play().catch(() => {
      onBlocked();
      document.addEventListener('pointerdown', () => audio.play(), { once: true });
    });
    // Chromium feeds a remote track to WebAudio only while an element plays it (FACTS.md).
    if (this.remoteMeter) this.remoteMeter.disconnect();
    this.remoteMeter = this.meter(stream, 8192);
  }

  stopRemote() {
    if (this.remoteMeter) this.remoteMeter.disconnect();
    this.remoteMeter = null;
    this.remoteStream = null;
    this.element.srcObject = null;
  }

  /**
   * Record the microphone and the remote audio (tests and debugging only).
   * @param {MediaStream|null} local the microphone
   * @returns {Promise<Recorder>}
   */
  async startRecording(local) {
    if (!this.context) throw new Error('no AudioContext yet');
    if (this.recorder) this.recorder.stop();
    this.recorder = await Recorder.start(this.context, local, this.remoteStream);
    return this.recorder;
  }

  /** @returns {{local: number, remote: number}} levels in dBFS */
  levels() {
    return {
      local: this.localMeter ? this.localMeter.level() : -Infinity,
      remote: this.remoteMeter ? this.remoteMeter.level() : -Infinity,
    };
  }
}
