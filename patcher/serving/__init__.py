"""Serving: ONNX export of a patched model with its parity check, publishing to S3, and the HTTP service that
follows the latest published version."""
