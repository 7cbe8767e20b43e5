"""The editing engine: Transformer-Patcher itself, on torch and transformers only.

A mistake becomes a few trained neurons in the model's last FFN (`editor`), kept local by an activation
memory (`memory`), saved as a patch set that loads back onto the model (`patchset`) and measured by the
paper's metrics (`metrics`). Nothing here knows about S3, Prefect, DVC or ONNX.
"""
