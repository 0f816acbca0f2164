"""Quantization implementations (one file per mode or backend); the public verb is `compress.quant.quantize`."""
