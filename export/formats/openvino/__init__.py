"""The OpenVINO format (IR `.xml` + `.bin`): its exporter, NNCF int8 quantizer and runtime."""

from export.formats.openvino import exporter, runtime  # noqa: F401
