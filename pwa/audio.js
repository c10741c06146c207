// Audio analysis for the call page: level meters and the dominant frequency.
//
// Pure helpers first (testable with plain arrays), then Meter, which wraps an
// AnalyserNode on a MediaStream. Chromium only feeds a *remote* WebRTC track
// into WebAudio while a media element is playing that stream, so the page
// plays the remote stream through its <audio> element before metering it.

export const SILENCE_DBFS = -Infinity;

/**
 * The frequency of the strongest bin, refined by quadratic interpolation.
 * @param {Float32Array} bins dB magnitudes from getFloatFrequencyData
 * @param {number} sampleRate the AudioContext's rate in Hz
 * @param {number} fftSize the analyser's FFT size
 * @returns {number|null} Hz, or null when every bin is silent
 */
export function peakFrequency(bins, sampleRate, fftSize) {
  let peak = -1;
  let best = -Infinity;
  // Bin 0 is DC and the last bin has no right neighbour to interpolate with.
  for (let i = 1; i < bins.length - 1; i++) {
    if (bins[i] > best) {
      best = bins[i];
      peak = i;
    }
  }
  if (peak < 0 || !Number.isFinite(best)) return null;
  const left = bins[peak - 1];
  const right = bins[peak + 1];
  const curvature = left - 2 * best + right;
  let offset = 0;
  if (Number.isFinite(left) && Number.isFinite(right) && curvature < 0) {
    offset = (0.5 * (left - right)) / curvature;
  }
  return ((peak + offset) * sampleRate) / fftSize;
}

/**
 * Root-mean-square level of samples in dBFS (0 dBFS = a full-scale square wave).
 * @param {Float32Array} samples time-domain samples in [-1, 1]
 * @returns {number} dBFS, or -Infinity for digital silence
 */
export function rmsDbfs(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  if (sum === 0 || samples.length === 0) return SILENCE_DBFS;
  return 10 * Math.log10(sum / samples.length);
}

/** An AnalyserNode listening to one MediaStream. */
export class Meter {
  /**
   * @param {AudioContext} context
   * @param {MediaStream} stream a stream with at least one audio track
   * @param {number} fftSize a power of two (8192 for frequency estimates)
   */
  constructor(context, stream, fftSize = 2048) {
    this.context = context;
    this.source = context.createMediaStreamSource(stream);
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = fftSize;
    this.source.connect(this.analyser);
    this.samples = new Float32Array(fftSize);
    this.bins = new Float32Array(this.analyser.frequencyBinCount);
  }

  /** @returns {number} the current level in dBFS */
  level() {
    this.analyser.getFloatTimeDomainData(this.samples);
    return rmsDbfs(this.samples);
  }

  /** @returns {number|null} the dominant frequency in Hz */
  frequency() {
    this.analyser.getFloatFrequencyData(this.bins);
    return peakFrequency(this.bins, this.context.sampleRate, this.analyser.fftSize);
  }

  disconnect() {
    this.source.disconnect();
  }
}

/**
 * A meter bar's fill fraction for a level: -60 dBFS and below is empty.
 * @param {number} dbfs
 * @returns {number} 0..1
 */
export function meterFraction(dbfs) {
  if (!Number.isFinite(dbfs)) return 0;
  return Math.min(1, Math.max(0, (dbfs + 60) / 60));
}

/**
 * Float samples as little-endian int16 PCM, base64-encoded (what the recorder hands out).
 * @param {Float32Array[]} chunks consecutive pieces of one signal, in [-1, 1]
 * @returns {string} base64 of the int16 samples
 */
export function int16Base64(chunks) {
  let total = 0;
  for (const chunk of chunks) total += chunk.length;
  const pcm = new Int16Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++) pcm[offset + i] = Math.max(-32768, Math.min(32767, Math.round(chunk[i] * 32768)));
    offset += chunk.length;
  }
  const bytes = new Uint8Array(pcm.buffer);
  let binary = '';
  // String.fromCharCode takes its arguments on the stack: a slice at a time.
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/**
 * Records the microphone and the remote audio on the AudioContext's clock, for
 * tests and debugging (botcall.startRecording / botcall.recording). Never used by a call.
 */
export class Recorder {
  /**
   * @param {AudioContext} context a running context
   * @param {MediaStream|null} local the microphone
   * @param {MediaStream|null} remote the remote stream (already playing in a media element)
   */
  static async start(context, local, remote) {
    await context.audioWorklet.addModule('/pwa/recorder-worklet.js?v=__BOTCALL_VERSION__');
    return new Recorder(context, local, remote);
  }

  constructor(context, local, remote) {
    this.context = context;
    this.node = new AudioWorkletNode(context, 'botcall-recorder', { numberOfInputs: 2, numberOfOutputs: 1 });
    this.sources = [];
    for (const [index, stream] of [local, remote].entries()) {
      if (!stream || stream.getAudioTracks().length === 0) continue;
      const source = context.createMediaStreamSource(stream);
      source.connect(this.node, 0, index);
      this.sources.push(source);
    }
    this.node.connect(context.destination); // silent: it only makes the graph pull the node
    this.firstFrame = null;
    this.local = [];
    this.remote = [];
    // [context ms at a chunk's end, performance.now() when it arrived] per chunk:
    // the page's clock against the context's, which a headless fake output
    // lets drift (a busy main thread only adds delay).
    this.arrivals = [];
    this.node.port.onmessage = (event) => {
      const end = ((event.data.frame + event.data.remote.length) / context.sampleRate) * 1000;
      this.arrivals.push([end, performance.now()]);
      if (this.firstFrame === null) this.firstFrame = event.data.frame;
      this.local.push(event.data.local);
      this.remote.push(event.data.remote);
    };
  }

  /**
   * What was recorded since the last take (each take starts a new piece).
   * @returns {{sampleRate: number, firstFrame: number|null, local: string, remote: string,
   *   clock: {arrivals: number[][], timeOrigin: number, outputLatency: number}}} int16
   *   base64 PCM; arrivals pair context ms with performance.now() as chunks
   *   arrived; a processed sample reaches the output outputLatency seconds later
   */
  take() {
    const context = this.context;
    const piece = {
      sampleRate: context.sampleRate,
      firstFrame: this.firstFrame,
      local: int16Base64(this.local),
      remote: int16Base64(this.remote),
      clock: {
        arrivals: this.arrivals,
        timeOrigin: performance.timeOrigin,
        outputLatency: (context.baseLatency || 0) + (context.outputLatency || 0),
      },
    };
    this.firstFrame = null;
    this.local = [];
    this.remote = [];
    this.arrivals = [];
    return piece;
  }

  stop() {
    for (const source of this.sources) source.disconnect();
    this.node.disconnect();
    this.node.port.onmessage = null;
  }
}
