"""Audio models: an exportable log-mel front end and the local audio models (WAV IO is `compress.data.wav`).

`LogMelFrontend` is hand-written (STFT as a strided `conv1d` with fixed Hann-windowed cos/sin DFT
kernels, then a fixed mel matrix) because `torch.stft` does not export reliably to ONNX, ExecuTorch
or CoreML; this version is plain conv/mul/matmul/log, so the exported model takes raw audio.

Local architectures registered in `compress.models.registry.LOCAL_MODELS` (raw waveform in, (N, outputs) out):

- `tiny_conv`: TensorFlow's MCU keyword-spotting net (log-mel → one conv → fully connected).
- `wav2vec2_tiny`: a small wav2vec2-style teacher (7-layer strided conv feature encoder, a few
  pre-norm transformer layers, mean pool, head). Written here, nothing from `transformers`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import KdtoolError
from compress.models.registry import LOCAL_MODELS

# ---------------------------------------------------------------- log-mel front end


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Triangular filters on the HTK mel scale (mel = 2595·log10(1 + f/700)), unnormalised.

    Returns:
        (n_mels, n_fft // 2 + 1) float32, as torchaudio's `melscale_fbanks(norm=None, mel_scale="htk")`.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mels = np.linspace(2595 * np.log10(1 + f_min / 700), 2595 * np.log10(1 + f_max / 700), n_mels + 2)
    pts = 700 * (10 ** (mels / 2595) - 1)
    diff = np.diff(pts)
    slopes = pts[None, :] - freqs[:, None]  # (bins, n_mels + 2)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0, np.minimum(down, up)).T.astype(np.float32)


class LogMelFrontend(nn.Module):
    """Waveform (N, samples) → log-mel (N, 1, n_mels, frames), exportable everywhere.

    Frames are centred like `torch.stft(center=True, pad_mode="constant")` (zero padding of n_fft/2
    on both sides, so frames = 1 + samples // hop), with a periodic Hann window and power spectrum.

    Static INT8 leaves it float (`keep_float_in_int8`, read by `compress.quant.static`): int8 on the
    power spectrum (a > 60 dB range) rounds quiet bins to 0 before the log.
    """

    keep_float_in_int8 = True

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, hop: int = 160, n_mels: int = 40,
                 f_min: float = 20.0, f_max: float | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.hop, self.n_mels, self.eps = sample_rate, n_fft, hop, n_mels, eps
        bins = n_fft // 2 + 1
        t = np.arange(n_fft)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * t / n_fft)  # periodic Hann
        phase = 2 * np.pi * np.outer(np.arange(bins), t) / n_fft  # (bins, n_fft)
        kernels = np.concatenate([np.cos(phase) * window, -np.sin(phase) * window])[:, None, :]
        self.register_buffer("dft", torch.tensor(kernels, dtype=torch.float32))  # (2·bins, 1, n_fft)
        self.register_buffer("mel", torch.tensor(mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.reshape(wave.shape[0], 1, -1)  # (N, 1, S)
        x = F.pad(x, (self.n_fft // 2, self.n_fft // 2))
        spec = F.conv1d(x, self.dft, stride=self.hop)  # (N, 2·bins, frames)
        bins = self.dft.shape[0] // 2
        power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
        mel = torch.matmul(self.mel, power)  # (N, n_mels, frames)
        return torch.log(mel + self.eps).unsqueeze(1)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of `num_samples`."""
        return 1 + num_samples // self.hop


# ---------------------------------------------------------------- models


class TinyConv(nn.Module):
    """TensorFlow's `tiny_conv` keyword spotter for MCU-class targets.

    log-mel → BatchNorm → Conv(8 filters, 8 mel × 10 frames, stride 2) → ReLU → dropout → mean over
    time → fully connected. The time mean (instead of TF's flatten) makes it independent of clip length.
    """

    def __init__(self, num_outputs: int, sample_rate: int = 16000, n_mels: int = 40, channels: int = 8,
                 dropout: float = 0.2, n_fft: int = 512, hop: int | None = None) -> None:
        super().__init__()
        hop = hop or sample_rate // 100  # 10 ms
        self.frontend = LogMelFrontend(sample_rate=sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels)
        self.norm = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, channels, kernel_size=(8, 10), stride=2, padding=(0, 4))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * ((n_mels - 8) // 2 + 1), num_outputs)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.frontend(wave))  # (N, 1, mels, frames)
        x = self.dropout(F.relu(self.conv(x)))  # (N, C, mels', frames')
        return self.head(x.mean(dim=3).flatten(1))


class FeatureEncoder(nn.Module):
    """wav2vec2's conv feature encoder: 7 strided conv1d layers, one frame per 320 samples."""

    KERNELS = (10, 3, 3, 3, 3, 2, 2)
    STRIDES = (5, 2, 2, 2, 2, 2, 2)

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers = []
        for i, (k, s) in enumerate(zip(self.KERNELS, self.STRIDES, strict=True)):
            norm = nn.GroupNorm(channels, channels) if i == 0 else nn.Identity()  # wav2vec2 "group" norm mode
            layers.append(nn.Sequential(nn.Conv1d(1 if i == 0 else channels, channels, k, s, bias=False),
                                        norm, nn.GELU()))
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, S) → (N, C, T)
        for layer in self.conv_layers:
            x = layer(x)
        return x


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer with `scaled_dot_product_attention` (exports to ONNX/ExecuTorch)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, D)
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.dropout(self.proj(a))
        return x + self.dropout(self.mlp(self.norm2(x)))


class Wav2Vec2Tiny(nn.Module):
    """A small wav2vec2-style classifier on raw waveforms.

    Submodules (hook names for feature KD): `feature_encoder.conv_layers.{i}` (N, C, T),
    `feature_projection` (N, T, D), `pos_conv`, `encoder.{i}` (N, T, D), `pooled_norm` (N, D), `head`.
    """

    def __init__(self, num_outputs: int, dim: int = 96, depth: int = 3, heads: int = 4, conv_dim: int = 64,
                 mlp_ratio: float = 4.0, pos_kernel: int = 31, dropout: float = 0.1,
                 normalize: bool = True, sample_rate: int | None = None) -> None:
        super().__init__()  # sample_rate: accepted like tiny_conv's; the conv encoder works at any rate
        if dim % heads:
            raise KdtoolError(f"wav2vec2_tiny: kwargs dim {dim} is not divisible by heads {heads}",
                              "choose dim as a multiple of heads")
        self.normalize = normalize
        self.feature_encoder = FeatureEncoder(conv_dim)
        self.feature_projection = nn.Sequential(nn.LayerNorm(conv_dim), nn.Linear(conv_dim, dim),
                                                nn.Dropout(dropout))
        groups = math.gcd(16, dim)
        self.pos_conv = nn.Sequential(nn.Conv1d(dim, dim, pos_kernel, padding=pos_kernel // 2, groups=groups),
                                      nn.GELU())
        self.encoder = nn.ModuleList([EncoderLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.pooled_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.reshape(wave.shape[0], 1, -1)  # (N, 1, S)
        if self.normalize:  # per-clip zero mean, unit variance, as wav2vec2's feature extractor does
            x = (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True) + 1e-5)
        feats = self.feature_encoder(x).transpose(1, 2)  # (N, T, C)
        x = self.feature_projection(feats)  # (N, T, D)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        for layer in self.encoder:
            x = layer(x)
        return self.head(self.pooled_norm(x.mean(dim=1)))


def _create(cls: type[nn.Module], arch: str, num_outputs: int, in_chans: int, kwargs: dict) -> nn.Module:
    if in_chans != 1:
        raise KdtoolError(f"{arch} takes raw mono audio, not {in_chans}-channel images",
                          "use it with data.source audiofolder or synthetic_audio")
    try:
        return cls(num_outputs, **kwargs)
    except TypeError as e:
        raise KdtoolError(f"{arch} kwargs: {e}", "remove the keyword it does not take") from None


@LOCAL_MODELS.register("tiny_conv")
def tiny_conv(num_outputs: int, in_chans: int = 1, **kwargs) -> nn.Module:
    """TinyConv keyword spotter (TF tiny_conv), raw audio; kwargs: sample_rate, n_mels, channels, n_fft."""
    return _create(TinyConv, "tiny_conv", num_outputs, in_chans, kwargs)


@LOCAL_MODELS.register("wav2vec2_tiny")
def wav2vec2_tiny(num_outputs: int, in_chans: int = 1, **kwargs) -> nn.Module:
    """wav2vec2-style teacher (raw audio); kwargs: dim, depth, heads, conv_dim, mlp_ratio, dropout."""
    return _create(Wav2Vec2Tiny, "wav2vec2_tiny", num_outputs, in_chans, kwargs)
