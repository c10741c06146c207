// BotCall PWA: the media side. One RTCPeerConnection per call attempt (Peer) and the
// page's audio (CallAudio: the AudioContext, the remote <audio> element, meters).
// No call logic here: app.js tells these what to do and forwards their events
// to the state machine in session.js.

import { Meter, Recorder } from './audio.js?v=__BOTCALL_VERSION__';

export const MIC_CONSTRAINTS = Object.freeze({ audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } });

/**
 * One RTCPeerConnection with a sendrecv audio transceiver (the microphone, and the
 * first remote track) and receiveTracks - 1 recvonly ones (group calls: one remote
 * track per other participant the server maps onto it), offered without trickle.
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
   * @param {number} [handlers.receiveTracks] downstream tracks to offer (the lobby's receive_tracks)
   */
  constructor({ onTrack, onConnectionState, onOffer, iceServers, onGathered, receiveTracks = 1 }) {
    const pc = new RTCPeerConnection({
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
      iceServers: Array.isArray(iceServers) ? iceServers.map((server) => ({ ...server, urls: [...server.urls] })) : [],
    });
    this.pc = pc;
    this.onOffer = onOffer || null;
    this.answered = false; // the first answer is applied: later offers are renegotiations
    this.sender = pc.addTransceiver('audio', { direction: 'sendrecv' }).sender;
    // All in one BUNDLE group (max-bundle): the server answers each sendonly
    // with an SSRC of its own (docs/protocol.md, group calls).
    for (let i = 1; i < receiveTracks; i++) pc.addTransceiver('audio', { direction: 'recvonly' });
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

/**
 * The AudioContext, the remote audio and the level meters.
 *
 * Each remote track plays in an <audio> element of its own (the page's
 * #remote-audio for the first, hidden ones made here for the others): the
 * browser mixes them natively. For the meter and the recorder the tracks are
 * also summed in WebAudio into `remoteStream` (a MediaStreamDestination);
 * Chromium feeds a remote track to WebAudio only while an element plays it
 * (FACTS.md), which the elements do.
 */
export class CallAudio {
  /** @param {HTMLAudioElement} element the page's remote-audio element */
  constructor(element) {
    this.element = element;
    this.context = null;
    this.localMeter = null;
    this.remoteMeter = null;
    this.remoteStream = null;
    this.recorder = null;
    /** @type {{track: MediaStreamTrack, element: HTMLAudioElement, source: AudioNode|null}[]} */
    this.remoteTracks = [];
    this.bus = null; // GainNode summing the remote tracks
    this.busOut = null; // its MediaStreamDestination
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
    this.elementStream();
    if (audio.paused) audio.play().catch((err) => console.warn('BotCall: audio element not started yet', err));
  }

  /**
   * The one MediaStream the <audio> element plays for the page's whole life.
   *
   * Remote tracks are added to it and removed from it; srcObject is never
   * replaced. Replacing it runs the element's load algorithm again, which
   * rejects the play() started in the Join click with AbortError ("The play()
   * request was interrupted by a new load request"), on every join.
   * @returns {MediaStream}
   */
  elementStream() {
    const audio = this.element;
    if (!audio.srcObject) audio.srcObject = new MediaStream();
    return audio.srcObject;
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
   * Play and meter one more remote track (group calls: one per downstream track).
   * @param {RTCTrackEvent} event
   * @param {() => void} onBlocked autoplay was refused; the next tap starts the audio
   */
  playRemote(event, onBlocked) {
    const track = event.track;
    if (this.remoteTracks.some((entry) => entry.track === track)) return;
    const first = this.remoteTracks.length === 0;
    const element = first ? this.element : document.createElement('audio');
    if (first) {
      // The page's element keeps the one stream unlock() started it on: a new
      // srcObject would abort that play() (see elementStream).
      const playing = this.elementStream();
      for (const old of playing.getAudioTracks()) playing.removeTrack(old);
      playing.addTrack(track);
    } else {
      element.autoplay = true;
      element.setAttribute('playsinline', '');
      element.hidden = true;
      this.element.after(element);
      element.srcObject = new MediaStream([track]);
    }
    // The first element was started in the Join click (unlock); again only if that was refused.
    if (element.paused) {
      element.play().catch(() => {
        onBlocked();
        const retry = () => element.play().catch((err) => console.warn('BotCall: audio still blocked', err));
        document.addEventListener('pointerdown', retry, { once: true });
      });
    }
    let source = null;
    if (this.context) {
      if (!this.bus) {
        this.bus = this.context.createGain();
        this.busOut = this.context.createMediaStreamDestination();
        this.bus.connect(this.busOut);
        this.remoteStream = this.busOut.stream;
        this.remoteMeter = this.meter(this.remoteStream, 8192);
      }
      source = this.context.createMediaStreamSource(new MediaStream([track]));
      source.connect(this.bus);
    } else {
      this.remoteStream = new MediaStream([track]);
    }
    this.remoteTracks.push({ track, element, source });
  }

  stopRemote() {
    if (this.remoteMeter) this.remoteMeter.disconnect();
    this.remoteMeter = null;
    this.remoteStream = null;
    for (const entry of this.remoteTracks) {
      if (entry.source) entry.source.disconnect();
      if (entry.element === this.element) {
        const playing = this.element.srcObject;
        for (const track of playing ? playing.getTracks() : []) playing.removeTrack(track);
      } else {
        entry.element.srcObject = null;
        entry.element.remove();
      }
    }
    this.remoteTracks = [];
    if (this.bus) this.bus.disconnect();
    this.bus = null;
    this.busOut = null;
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
