"""The registry of kdtool-local architectures (audio nets, tiny MCU nets, CIFAR wide ResNets)."""

from compress.core.registry import Registry

LOCAL_MODELS: Registry = Registry("local model")
"""`fn(num_outputs, in_chans, **kwargs) -> nn.Module`, looked up by the names recipes write in `arch`."""
