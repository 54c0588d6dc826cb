"""Base models: loading (packaged GGUF, local folders), precision, and the rules for weight files (safetensors, PEFT)."""
