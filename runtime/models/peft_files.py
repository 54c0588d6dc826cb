"""PEFT adapter files: how PEFT names and scales its tensors, and reading a LoRA folder for serving."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import PersonaeError
from runtime.models.formats import PICKLE_SUFFIXES

PREFIX = "base_model.model."


def lora_scale(config: dict, module: str) -> float:
    """The factor PEFT puts on a module's B @ A (alpha / r; rsLoRA: alpha / sqrt(r)), patterns included."""
    # rank_pattern / alpha_pattern keys match as in peft.utils.other.get_pattern_key (the module or a
    # dotted suffix of its path), without importing PEFT on the serving path.
    def pattern(table: dict, default):
        key = next((k for k in table if re.match(rf"(.*\.)?({k})$", module)), None)
        return default if key is None else table[key]

    rank = float(pattern(config.get("rank_pattern") or {}, config.get("r", 8)))
    alpha = float(pattern(config.get("alpha_pattern") or {}, config.get("lora_alpha", 8)))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


class AdapterLoadError(PersonaeError, ValueError):
    """An adapter folder that cannot be served on this base; the message says which part and why."""


@dataclass
class LoadedAdapter:
    """One adapter read from PEFT files: LoRA pairs per module and whole replacement modules."""

    name: str
    pairs: dict = field(default_factory=dict)  # module name -> (A^T [in, r], B^T*scale [r, out])
    replaced: dict = field(default_factory=dict)  # module name -> {param: tensor} (modules_to_save)
    rank: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes its tensors take in memory."""
        total = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.pairs.values())
        return total + sum(t.numel() * t.element_size() for p in self.replaced.values() for t in p.values())


def read_peft_adapter(folder, name: str, model, dtype=None) -> LoadedAdapter:
    """Read a PEFT LoRA folder (safetensors only) and check it against the model's modules."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not weights_path.exists():
        pickles = [p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise AdapterLoadError(f"{folder}: adapter weights are pickled ({', '.join(pickles)}); pickles are never "
                                   "loaded: convert them to adapter_model.safetensors")
        raise AdapterLoadError(f"{folder}: no adapter_model.safetensors (is this a PEFT adapter folder?)")
    if not config_path.exists():
        raise AdapterLoadError(f"{folder}: no adapter_config.json (is this a PEFT adapter folder?)")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterLoadError(f"{folder}: peft_type {config.get('peft_type')!r} is not served; only LoRA adapters are")
    if config.get("use_dora"):
        raise AdapterLoadError(f"{folder}: DoRA adapters are not served by the batched generator; train plain LoRA")
    if config.get("fan_in_fan_out"):
        raise AdapterLoadError(f"{folder}: fan_in_fan_out adapters (GPT-2 Conv1D) are not served")
    tensors = load_file(str(weights_path))
    modules = dict(model.named_modules())
    dtype = dtype or next(model.parameters()).dtype
    adapter = LoadedAdapter(name)
    lora: dict[str, dict[str, object]] = {}
    for key, tensor in tensors.items():
        bare = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if ".lora_A." in bare or ".lora_B." in bare:
            module, rest = bare.split(".lora_A." if ".lora_A." in bare else ".lora_B.", 1)
            lora.setdefault(module, {})["A" if ".lora_A." in bare else "B"] = tensor
        elif ".lora_" in bare:
            raise AdapterLoadError(f"{folder}: tensor {key} is a LoRA part this runtime does not serve")
        else:  # modules_to_save: a whole trained copy of a module
            module, _, param = bare.rpartition(".")
            module = module.removesuffix(".modules_to_save").removesuffix(".original_module")
            if module not in modules:
                raise AdapterLoadError(f"{folder}: module {module!r} does not exist in the base model")
            adapter.replaced.setdefault(module, {})[param] = tensor
    for module, parts in lora.items():
        if module not in modules:
            raise AdapterLoadError(f"{folder}: target module {module!r} does not exist in the base model")
        if set(parts) != {"A", "B"}:
            raise AdapterLoadError(f"{folder}: module {module!r} has only lora_{''.join(parts)}")
        a, b = parts["A"], parts["B"]
        in_features, out_features = linear_shape(modules[module])
        if a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
            raise AdapterLoadError(
                f"{folder}: shapes of {module} differ from the base (adapter A {tuple(a.shape)}, "
                f"B {tuple(b.shape)}; base Linear {in_features}->{out_features})"
            )
        r = a.shape[0]
        scale = lora_scale(config, module)
        adapter.pairs[module] = (a.t().contiguous().to(dtype), (b.t() * scale).contiguous().to(dtype))
        adapter.rank = max(adapter.rank, r)
    for module, params in adapter.replaced.items():
        expected = dict(modules[module].named_parameters(recurse=False))
        for param, tensor in params.items():
            if param not in expected or tuple(expected[param].shape) != tuple(tensor.shape):
                raise AdapterLoadError(f"{folder}: saved module {module}.{param} {tuple(tensor.shape)} does not match "
                                       "the base model")
    if not adapter.pairs and not adapter.replaced:
        raise AdapterLoadError(f"{folder}: the adapter holds no LoRA tensors")
    return adapter


def linear_shape(module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear, also int8 dynamically quantised ones."""
    try:
        return int(module.in_features), int(module.out_features)
    except AttributeError:
        raise AdapterLoadError(f"LoRA target {type(module).__name__} is not a Linear layer") from None
