"""wav2lip-trt: Wav2Lip lip-sync with S3FD detection, reference-exact in PyTorch, fast on TensorRT."""

__version__ = "0.1.0"
