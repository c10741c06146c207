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
