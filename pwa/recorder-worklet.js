// A test-and-debugging recorder (AudioWorklet side): the microphone and the
// remote audio, sample by sample, on the AudioContext's own clock.
//
// Loaded only when something calls botcall.startRecording() (the end-to-end
// tests and bench/barge_in.py); a call never loads it. Input 0 is the
// microphone, input 1 the remote stream, both as the page hears them; channel 0
// of each is kept. Every CHUNK frames the processor posts
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
    for (let i = 0; i < frames; i++) {
      if (this.fill === 0) this.start = currentFrame + i;
      this.local[this.fill] = local ? local[i] : 0;
      this.remote[this.fill] = remote ? remote[i] : 0;
      this.fill += 1;
      if (this.fill === CHUNK) {
        this.port.postMessage({ frame: this.start, local: this.local, remote: this.remote }, [this.local.buffer, this.remote.buffer]);
        this.local = new Float32Array(CHUNK);
        this.remote = new Float32Array(CHUNK);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor('botcall-recorder', RecorderProcessor);
