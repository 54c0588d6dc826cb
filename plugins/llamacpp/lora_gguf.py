"""PEFT LoRA folder -> llama.cpp LoRA GGUF (fp32 pairs, PEFT's scale folded into B), with gguf-py's names.

The layout is what llama.cpp's convert_lora_to_gguf.py writes: `general.type = adapter`,
`adapter.type = lora`, tensors `blk.N.attn_q.weight.lora_a` [r, in] and `.lora_b` [out, r]. We write
alpha = 0, which llama.cpp reads as "scale = the adapter's scale" (1), because PEFT's alpha / r (or rsLoRA's,
or a per-module pattern) is already in B. q and k are permuted as llama.cpp permutes the base's (rope layout).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from runtime.models.peft_files import AdapterLoadError, read_peft_adapter

FORMAT = "1"  # bump when the written layout changes, so cached files are rewritten


def _permute(rows, heads: int):
    """llama.cpp's q/k row order for rope (convert_hf_to_gguf's LlamaModel.permute) on a [out, ...] array."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def folder_digest(folder: Path) -> str:
    """A short id of an adapter folder's weights and config (cache key of its GGUF)."""
    digest = hashlib.sha256(FORMAT.encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = folder / name
        stat = path.stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def convert_lora(folder, model, target: Path) -> Path:
    """Write `target` (a llama.cpp LoRA GGUF) from a PEFT LoRA folder checked against the fp32 `model`."""
    import gguf
    import torch

    adapter = read_peft_adapter(folder, Path(folder).name, model, dtype=torch.float32)
    if adapter.replaced:
        raise AdapterLoadError(f"{folder}: modules_to_save ({', '.join(sorted(adapter.replaced))}) have no llama.cpp "
                               "LoRA form")
    config = model.config
    if getattr(config, "model_type", "llama") != "llama":
        raise AdapterLoadError(f"{folder}: only llama-architecture bases are converted (this one is "
                               f"{config.model_type!r})")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    writer_path = target.with_name(target.name + f".tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(writer_path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    for module, (a_t, b_t) in sorted(adapter.pairs.items()):
        name = names.get_name(module)
        if name is None:
            raise AdapterLoadError(f"{folder}: module {module!r} has no llama.cpp tensor name")
        a = a_t.t().contiguous().numpy()  # [r, in]
        b = b_t.t().contiguous().numpy()  # [out, r], scale included
        leaf = module.rsplit(".", 1)[-1]
        if leaf in heads:
            b = _permute(b, heads[leaf]).copy()
        writer.add_tensor(f"{name}.weight.lora_a", a)
        writer.add_tensor(f"{name}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(writer_path, target)
    return target


def cached_lora(folder, model, cache_dir: Path) -> Path:
    """The GGUF of a PEFT folder, converted once into `cache_dir` (keyed by the folder's files)."""
    folder = Path(folder)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{folder.name}-{folder_digest(folder)}.gguf"
    return target if target.exists() else convert_lora(folder, model, target)
