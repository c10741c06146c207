// A test-and-debugging recorder (AudioWorklet side): the microphone and the
// remote audio, sample by sample, on the AudioContext's own clock.
//
// Loaded only when something calls botcall.startRecording() (the end-to-end
// tests and bench/barge_in.py); a call never loads it. Input 0 is the
// microphone, input 1 the remote stream, both as the page hears them; channel 0
// of each is kept. Every CHUNK frames (sooner at a gap in the context frames) the processor posts
// {frame, local, remote} (Float32Arrays, transferred) to the page, where
// `frame` is the context frame (`currentFrame`) of the chunk's first sample.
// The output stays silent: it is connected only so the graph pulls the node.

const CHUNK = 4800;

class RecorderProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.fill = 0;
    this.start = 0;
    this.local = new Float32Array(CHUNK);
    this.remote = new Float32Array(CHUNK);
  }

  process(inputs) {
    const local = inputs[0] && inputs[0][0];
    const remote = inputs[1] && inputs[1][0];
    const frames = (local || remote || { length: 128 }).length;
    // A chunk holds contiguous frames only: when the graph skipped quanta (a
    // busy machine), the partial chunk goes out and a new one starts, so every
    // sample keeps its place on the context's clock.
    if (this.fill > 0 && currentFrame !== this.start + this.fill) this.flush();
    for (let i = 0; i < frames; i++) {
      if (this.fill === 0) this.start = currentFrame + i;
      this.local[this.fill] = local ? local[i] : 0;
      this.remote[this.fill] = remote ? remote[i] : 0;
      this.fill += 1;
      if (this.fill === CHUNK) this.flush();
    }
    return true;
  }

  flush() {
    const local = this.fill === CHUNK ? this.local : this.local.slice(0, this.fill);
    const remote = this.fill === CHUNK ? this.remote : this.remote.slice(0, this.fill);
    this.port.postMessage({ frame: this.start, local, remote }, [local.buffer, remote.buffer]);
    this.local = new Float32Array(CHUNK);
    this.remote = new Float32Array(CHUNK);
    this.fill = 0;
  }
}

registerProcessor('botcall-recorder', RecorderProcessor);
