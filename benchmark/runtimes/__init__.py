"""One `Runtime` per backend, registered by name: torch, torchscript, onnxruntime, executorch, coreml, tensorrt."""

from benchmark.runtimes.base import RUNTIMES, Runtime, Session, get_runtime

__all__ = ["RUNTIMES", "Runtime", "Session", "get_runtime"]
