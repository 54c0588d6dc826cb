"""The local backend: this runtime's own continuous-batching generator, in this process (the default)."""

from __future__ import annotations

from runtime.hookspecs import hookimpl


def local_generator(settings, base):
    """A BatchingGenerator over the loaded base model, sized by the settings."""
    from runtime.generation.batching import BatchingGenerator  # torch: only when a generator starts

    return BatchingGenerator(
        base.model, base.tokenizer, max_queue=settings.max_queue, threads=settings.threads,
        max_batch=settings.max_batch, max_adapters=settings.max_adapters, max_models=settings.max_full_models,
        pack=settings.pack_weights, prefix_cache_mb=settings.prefix_cache_mb,
    )


@hookimpl
def register_backends(register):
    register("local", local_generator)
