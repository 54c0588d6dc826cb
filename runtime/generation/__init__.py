"""The local backend's generator: continuous batching, batched multi-LoRA, sampling, KV and prefix caches."""
