"""Streaming pitch and formant shifter as a batched torch model with explicit per-stream state.

Method (chosen for latency and batchability; see docs/voice-conversion.md): a phase vocoder that
shifts pitch *without* time stretching, with the spectral envelope separated so formants move
independently.
Per 8 ms hop, for the last 32 ms of input (512-sample Hann frame at 16 kHz):
1. DFT (as matrix products, so the graph exports to plain ONNX); magnitude and phase;
2. spectral envelope by cepstral smoothing (lifter at 3 ms quefrency); fine structure = |X| / envelope;
3. instantaneous frequency of every bin from the phase advance since the previous frame;
4. output bin j takes the fine structure and frequency of input bin j / a (a = 2^(semitones/12)),
   its frequency multiplied by a, and the envelope at j / b (b = 2^(formant semitones/12); b = 1
   keeps the speaker's formants while the pitch moves);
5. output phase accumulates the new frequencies; inverse DFT; windowed overlap-add.
State carried between calls (all fixed size): previous analysis phase [257], accumulated synthesis
phase [257], overlap-add tail [384], last gain [1]. Inputs: ``frames`` [B, K, 512] (the K analysis
frames of this block, built by the caller from its audio history), ``semitones`` / ``formant`` /
``gain_db`` [B, 1]. Output: K x 128 new samples, aligned with input samples ``[t - 512, t - 384)``
for a frame ending at ``t`` (algorithmic latency 24-32 ms). Gain ramps linearly across each block,
so parameter changes never click.
"""

from __future__ import annotations

import math

import torch

N_FFT = 512
HOP = 128
BINS = N_FFT // 2 + 1
LIFTER = 48                 # cepstral coefficients kept (3 ms at 16 kHz): below adult voices' pitch periods
OLA_NORM = 1.5              # sum of squared Hann windows at 75 % overlap


def _atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2 from Atan and Where (ONNX has no Atan2 operator)."""
    safe_x = torch.where(x == 0, torch.full_like(x, 1e-30), x)
    a = torch.atan(y / safe_x)
    a = torch.where(x < 0, torch.where(y >= 0, a + math.pi, a - math.pi), a)
    a = torch.where((x == 0) & (y > 0), torch.full_like(a, math.pi / 2), a)
    a = torch.where((x == 0) & (y < 0), torch.full_like(a, -math.pi / 2), a)
    return torch.where((x == 0) & (y == 0), torch.zeros_like(a), a)


def _princarg(p: torch.Tensor) -> torch.Tensor:
    return p - 2 * math.pi * torch.round(p / (2 * math.pi))


class PitchShifter(torch.nn.Module):
    state_names = ("prev_phase", "synth_phase", "ola", "prev_gain")

    def __init__(self) -> None:
        super().__init__()
        n = torch.arange(N_FFT, dtype=torch.float64)
        k = torch.arange(BINS, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / N_FFT)
        ang = 2 * math.pi * n[:, None] * k[None, :] / N_FFT
        self.register_buffer("window", window.float())
        self.register_buffer("cos", torch.cos(ang).float())          # [512, 257]
        self.register_buffer("sin", -torch.sin(ang).float())
        w = torch.full((BINS,), 2.0, dtype=torch.float64)
        w[0], w[-1] = 1.0, 1.0
        self.register_buffer("icos", (torch.cos(ang).T * w[:, None] / N_FFT).float())   # [257, 512]
        self.register_buffer("isin", (-torch.sin(ang).T * w[:, None] / N_FFT).float())
        # real cepstrum of a symmetric log spectrum: cosine transforms, lifter applied in between
        q = torch.arange(BINS, dtype=torch.float64)
        cq = torch.cos(2 * math.pi * k[:, None] * q[None, :] / N_FFT) * w[:, None] / N_FFT
        lift = (q < LIFTER).double() * torch.where(q == 0, 1.0, 2.0) * (q < LIFTER).double()
        lift[0] = 1.0
        env = (cq @ torch.diag(lift) @ torch.cos(2 * math.pi * q[:, None] * k[None, :] / N_FFT))
        self.register_buffer("smooth", env.float())                   # log-magnitude -> log-envelope
        self.register_buffer("bin_freq", (2 * math.pi * k * HOP / N_FFT).float())   # expected advance per hop
        self.register_buffer("bins", k.float())

    @staticmethod
    def initial_state(batch: int = 1) -> dict[str, torch.Tensor]:
        return {"prev_phase": torch.zeros(batch, BINS), "synth_phase": torch.zeros(batch, BINS),
                "ola": torch.zeros(batch, N_FFT - HOP), "prev_gain": torch.ones(batch, 1)}

    def _interp(self, values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of ``values`` [B, 257] at fractional bins ``pos`` [B, 257] (0 outside)."""
        lo = torch.floor(pos)
        frac = pos - lo
        lo_i = lo.clamp(0, BINS - 1).long()
        hi_i = (lo + 1).clamp(0, BINS - 1).long()
        v = torch.gather(values, 1, lo_i) * (1 - frac) + torch.gather(values, 1, hi_i) * frac
        return torch.where((pos >= 0) & (pos <= BINS - 1), v, torch.zeros_like(v))

    def forward(self, frames, semitones, formant, gain_db, prev_phase, synth_phase, ola, prev_gain):
        b, k_frames, _ = frames.shape
        alpha = torch.pow(2.0, semitones / 12.0)                     # [B, 1]
        beta = torch.pow(2.0, formant / 12.0)
        gain = torch.pow(10.0, gain_db / 20.0)
        src_pitch = self.bins[None, :] / alpha                       # output bin j reads input bin j / a
        src_env = self.bins[None, :] / beta
        outs = []
        for f in range(k_frames):                                    # K is small and fixed: unrolled
            x = frames[:, f, :] * self.window
            re = x @ self.cos
            im = x @ self.sin
            mag = torch.sqrt(re * re + im * im + 1e-20)
            phase = _atan2(im, re)
            log_env = torch.log(mag + 1e-7) @ self.smooth
            env = torch.exp(log_env)
            fine = mag / (env + 1e-12)
            dphi = _princarg(phase - prev_phase - self.bin_freq)
            inst = self.bin_freq + dphi                               # phase advance per hop, rad
            prev_phase = phase
            new_fine = self._interp(fine, src_pitch)
            new_env = self._interp(env, src_env)
            new_mag = new_fine * new_env
            adv = self._interp(inst, src_pitch) * alpha
            synth_phase = _princarg(synth_phase + adv)
            y = (new_mag * torch.cos(synth_phase)) @ self.icos + (new_mag * torch.sin(synth_phase)) @ self.isin
            y = y * self.window / OLA_NORM
            acc = torch.cat([ola, torch.zeros(b, HOP, dtype=ola.dtype, device=ola.device)], dim=1) + y
            outs.append(acc[:, :HOP])
            ola = acc[:, HOP:]
        out = torch.cat(outs, dim=1)                                 # [B, K*HOP]
        t = torch.arange(1, k_frames * HOP + 1, dtype=out.dtype, device=out.device)[None, :] / (k_frames * HOP)
        out = out * (prev_gain + (gain - prev_gain) * t)
        return out, prev_phase, synth_phase, ola, gain


def export_onnx(path, frames_per_call: int = 2) -> None:
    """Export with a dynamic batch axis; K (frames per call) is fixed in the graph."""
    m = PitchShifter().eval()
    st = PitchShifter.initial_state(2)
    args = (torch.zeros(2, frames_per_call, N_FFT), torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1),
            st["prev_phase"], st["synth_phase"], st["ola"], st["prev_gain"])
    names_in = ["frames", "semitones", "formant", "gain_db", "prev_phase", "synth_phase", "ola", "prev_gain"]
    names_out = ["audio", "next_prev_phase", "next_synth_phase", "next_ola", "next_prev_gain"]
    torch.onnx.export(m, args, str(path), input_names=names_in, output_names=names_out, opset_version=17,
                      dynamo=False, dynamic_axes={n: {0: "batch"} for n in names_in + names_out})


if __name__ == "__main__":          # python -m voxserve.models.pitch_shift [OUT]: re-export the shipped graph
    import sys
    from pathlib import Path

    # Written into the checkout (run from its root), never into an installed package.
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "models/vc/pitch_shift.onnx")
    if not out.parent.is_dir():
        sys.exit(f"{out.parent} does not exist: run from the repository root or name the output file")
    export_onnx(out)
    print(f"wrote {out}")
