"""Log-mel front end against torch.stft, its exports, and the local audio models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.synthetic import generate_audio
from compress.models.audio import LogMelFrontend, mel_filterbank
from compress.models.build import create_architecture
from compress.models.registry import LOCAL_MODELS

W2V_SMALL = {"dim": 32, "depth": 1, "heads": 2, "conv_dim": 16}


def reference_logmel(m: LogMelFrontend, x: torch.Tensor) -> torch.Tensor:
    spec = torch.stft(x, m.n_fft, hop_length=m.hop, window=torch.hann_window(m.n_fft), center=True,
                      pad_mode="constant", return_complex=True)
    return torch.log(m.mel @ spec.abs() ** 2 + m.eps).unsqueeze(1)


@pytest.mark.parametrize(("rate", "n_fft", "hop", "n_mels"), [(16000, 512, 160, 40), (8000, 256, 80, 32)])
def test_logmel_matches_torch_stft(rate, n_fft, hop, n_mels):
    torch.manual_seed(0)
    m = LogMelFrontend(sample_rate=rate, n_fft=n_fft, hop=hop, n_mels=n_mels)
    x = torch.randn(3, rate) * 0.1
    out = m(x)
    assert out.shape == (3, 1, n_mels, m.num_frames(rate)) == (3, 1, n_mels, 1 + rate // hop)
    assert (out - reference_logmel(m, x)).abs().max() < 1e-4


def test_mel_filterbank_triangles_cover_the_band():
    fb = mel_filterbank(16000, 512, 40, f_min=20.0)
    assert fb.shape == (40, 257) and fb.min() >= 0 and fb.max() <= 1
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 200  # ordered low → high, up to near Nyquist
    assert (fb.sum(axis=0)[2:250] > 0).all()  # every bin inside the band falls in some filter


def test_logmel_exports_torch_export_and_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = LogMelFrontend().eval()
    x = torch.randn(2, 16000) * 0.1
    ep = torch.export.export(m, (x,))
    assert torch.allclose(ep.module()(x), m(x), atol=1e-6)
    torch.onnx.export(m, (x,), str(tmp_path / "logmel.onnx"), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(tmp_path / "logmel.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - m(x).numpy()).max() < 1e-4


@pytest.mark.parametrize(("arch", "kwargs"), [("tiny_conv", {}), ("wav2vec2_tiny", W2V_SMALL)])
def test_audio_models_forward_and_export(arch, kwargs):
    model = create_architecture(arch, 5, 1, dict(kwargs), pretrained=False).eval()
    for samples in (16000, 8000):  # any clip length
        assert model(torch.randn(2, samples)).shape == (2, 5)
    x = torch.randn(2, 16000) * 0.1
    ep = torch.export.export(model, (x,))
    assert torch.allclose(ep.module()(x), model(x), atol=1e-5)


def test_wav2vec2_tiny_named_submodules_and_frames():
    model = create_architecture("wav2vec2_tiny", 2, 1, dict(W2V_SMALL), pretrained=False).eval()
    names = dict(model.named_modules())
    assert {"feature_encoder.conv_layers.6", "feature_projection", "encoder.0", "head"} <= set(names)
    seen = {}

    def hook(module, inputs, output):
        seen["enc"] = output.shape

    names["encoder.0"].register_forward_hook(hook)
    model(torch.randn(1, 16000))
    assert seen["enc"] == (1, 49, 32)  # wav2vec2: one frame per 20 ms (stride 320) at 16 kHz
    default = LOCAL_MODELS.get("wav2vec2_tiny")(2, 1)
    tiny = LOCAL_MODELS.get("tiny_conv")(2, 1)
    assert sum(p.numel() for p in default.parameters()) > 100 * sum(p.numel() for p in tiny.parameters())


def test_audio_model_config_errors():
    with pytest.raises(KdtoolError, match="tiny_conv kwargs"):
        create_architecture("tiny_conv", 2, 1, {"widht": 3}, pretrained=False)
    with pytest.raises(KdtoolError, match="raw mono audio"):
        create_architecture("tiny_conv", 2, 3, {}, pretrained=False)
    with pytest.raises(KdtoolError, match="divisible"):
        create_architecture("wav2vec2_tiny", 2, 1, {"dim": 30, "heads": 4}, pretrained=False)


def test_tiny_conv_learns_synthetic_keywords():
    task = Task("multiclass", 3)
    x, y = generate_audio(task, 192, sample_rate=8000, clip_samples=4000, seed=0)
    xv, yv = generate_audio(task, 90, sample_rate=8000, clip_samples=4000, seed=1)
    torch.manual_seed(0)
    kwargs = {"sample_rate": 8000, "channels": 16, "n_fft": 256}
    model = create_architecture("tiny_conv", 3, 1, kwargs, pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        for i in range(0, 192, 32):
            loss = task.hard_loss(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = task.metrics(model.eval()(xv), yv)["accuracy"]
    assert acc > 0.8  # chance is 1/3; measured 0.94 after 5 epochs
