// Playback of converted audio through a jitter buffer in an AudioWorklet.
// Chunks are queued in a ring; playback starts once `target` ms are buffered and, after an
// underrun (network jitter larger than the buffer), waits for `target` ms again instead of
// clicking through every gap. Reports its level, samples played and underruns.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.target = Math.round(sampleRate * (opts.targetMs || 60) / 1000);
    this.ring = new Float32Array(sampleRate * 4);
    this.read = 0; this.write = 0; this.level = 0;
    this.playing = false; this.underruns = 0; this.played = 0; this.reportIn = 0;
    this.port.onmessage = (e) => {
      const x = e.data;
      for (let i = 0; i < x.length; i++) {
        if (this.level === this.ring.length) { this.read = (this.read + 1) % this.ring.length; this.level--; }
        this.ring[this.write] = x[i];
        this.write = (this.write + 1) % this.ring.length;
        this.level++;
      }
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.level >= this.target) this.playing = true;
    for (let i = 0; i < out.length; i++) {
      if (this.playing && this.level > 0) {
        out[i] = this.ring[this.read];
        this.read = (this.read + 1) % this.ring.length;
        this.level--; this.played++;
      } else {
        if (this.playing) { this.playing = false; this.underruns++; }
        out[i] = 0;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (--this.reportIn <= 0) {
      this.reportIn = 20;
      this.port.postMessage({ level: this.level, played: this.played, underruns: this.underruns });
    }
    return true;
  }
}
registerProcessor("playback-processor", PlaybackProcessor);
