"""Weight-file rules shared by the model loader, the registry and the generator."""

from __future__ import annotations

WEIGHT_SUFFIXES = (".safetensors",)  # the only weights ever loaded
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # weights never unpickled
