"""WAV IO: a RIFF/WAVE reader (PCM 8-32 bit, float, extensible), linear resampling, length fitting."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_WAV_DTYPES = {(1, 8): np.uint8, (1, 16): np.dtype("<i2"), (1, 32): np.dtype("<i4"),
               (3, 32): np.dtype("<f4"), (3, 64): np.dtype("<f8")}


def read_wav(path: str | Path, header_only: bool = False) -> tuple[np.ndarray, int]:
    """Read a RIFF/WAVE file as float32 (frames, channels) in [-1, 1] and its sample rate.

    Handles integer PCM (8/16/24/32 bit), IEEE float (32/64 bit) and WAVE_FORMAT_EXTENSIBLE. The
    standard `wave` module of Python 3.11 reads integer PCM only and returns short data for a
    truncated file silently; this reader refuses truncated data chunks.

    Args:
        path: the .wav file.
        header_only: only check the chunks against the file size (returns an empty array).

    Raises:
        ValueError: not a WAV file, unsupported encoding, truncated, or non-finite samples.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise ValueError("not a RIFF/WAVE file")
        fmt, data = None, None
        while (chunk := f.read(8)) and len(chunk) == 8:
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                if fmt is None:
                    raise ValueError("data chunk before fmt chunk")
                if f.tell() + n > size:
                    raise ValueError(f"truncated: data chunk declares {n} bytes, {size - f.tell()} present")
                data = b"" if header_only else f.read(n)
                break
            body = f.read(n + (n & 1))
            if cid == b"fmt ":
                if n < 16:
                    raise ValueError("fmt chunk too short")
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == 0xFFFE and n >= 26:  # EXTENSIBLE: the real tag opens the sub-format GUID
                    tag = struct.unpack("<H", body[24:26])[0]
                fmt = (tag, channels, rate, bits)
    if fmt is None or data is None:
        raise ValueError("no fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1 or ((tag, bits) not in _WAV_DTYPES and (tag, bits) != (1, 24)):
        raise ValueError(f"unsupported WAV encoding (format {tag}, {bits} bit, {channels} ch, {rate} Hz)")
    if header_only:
        return np.zeros((0, channels), np.float32), rate
    width = bits // 8
    frames = len(data) // (width * channels)
    raw = data[: frames * width * channels]
    if bits == 24:
        b = np.zeros((frames * channels, 4), np.uint8)
        b[:, 1:] = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        x = b.view("<i4")[:, 0].astype(np.float32) / 2.0**31
    else:
        x = np.frombuffer(raw, _WAV_DTYPES[(tag, bits)]).astype(np.float32)
        x = (x - 128.0) / 128.0 if bits == 8 else x if tag == 3 else x / float(2 ** (bits - 1))
    if not np.isfinite(x).all():
        raise ValueError("non-finite samples")
    return x.reshape(frames, channels), rate


def resample_linear(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono signal by linear interpolation.

    Cheap and dependency-free, but without an anti-aliasing filter: downsampling folds energy above
    the new Nyquist frequency back into the band. Resample offline (sox, ffmpeg) when that matters.
    """
    n_out = max(1, int(round(len(x) * new_rate / rate)))
    t = np.arange(n_out, dtype=np.float64) * (rate / new_rate)
    return np.interp(t, np.arange(len(x)), x).astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end, or crop the center, to exactly `n` samples (float32)."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return np.ascontiguousarray(x[start:start + n], dtype=np.float32)
    return np.pad(x.astype(np.float32), (0, n - len(x)))
