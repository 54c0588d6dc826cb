"""Full fine-tunes stored as a delta from the base: only changed tensors, exact or int8 with per-row scales.

delta.safetensors holds, per changed tensor NAME, one of:
  NAME::v      the fine-tuned value itself (exact; used for 1-D tensors and the "exact" encoding)
  NAME::d      w_ft - w_base in bfloat16 ("bf16" encoding)
  NAME::q + NAME::scale   round((w_ft - w_base) / scale) as int8, one fp32 scale per row ("int8")
Unchanged tensors are not stored. Its metadata "personae_delta" is JSON: encoding, lossless, dtypes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from adapters.errors import IncompatibleAdapter, RegistryError
from adapters.manifest import MANIFEST, read_manifest
from adapters.safety import check_fingerprint
from runtime.models.formats import PICKLE_SUFFIXES

DELTA_FILE = "delta.safetensors"
ENCODINGS = ("auto", "exact", "int8", "bf16", "none")
LOSSLESS_TARGET = 0.5  # "auto" keeps the exact delta when it is at most this share of a plain copy


class BaseTensors:
    """Lazy access to a base model folder's tensors by name (a tied lm_head maps to the embeddings)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.handles, self.where = [], {}
        for path in sorted(self.folder.glob("*.safetensors")):
            handle = safe_open(str(path), framework="pt")
            self.handles.append(handle)
            for name in handle.keys():
                self.where[name] = handle
        config = json.loads((self.folder / "config.json").read_text())
        if "lm_head.weight" not in self.where and config.get("tie_word_embeddings", True):
            if "model.embed_tokens.weight" in self.where:
                self.where["lm_head.weight"] = self.where["model.embed_tokens.weight"]
                self.alias = {"lm_head.weight": "model.embed_tokens.weight"}
                return
        self.alias = {}

    def get(self, name: str):
        """The base tensor of that name, or None."""
        handle = self.where.get(name)
        return None if handle is None else handle.get_tensor(self.alias.get(name, name))


def _full_tensors(folder: Path) -> dict:
    """Every tensor of a full model folder (single file or shards)."""
    from safetensors.torch import load_file

    tensors = {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise RegistryError(f"{folder}: no .safetensors weights in this model folder")
    for path in files:
        tensors.update(load_file(str(path)))
    return tensors


def _int8(delta):
    """Per-row symmetric int8 quantisation of a 2-D delta: (q, scale)."""
    import torch

    scale = delta.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(delta / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.to(torch.float32)


def encode_delta(full_folder, base_folder, out_folder, encoding: str = "auto") -> dict:
    """Write full_folder's weights into out_folder as a delta from base_folder; return its stats."""
    import torch
    from safetensors.torch import save_file

    if encoding not in ENCODINGS or encoding == "none":
        raise RegistryError(f"delta encoding {encoding!r} is not one of {', '.join(ENCODINGS[:-1])}")
    full_folder, out_folder = Path(full_folder), Path(out_folder)
    base = BaseTensors(base_folder)
    tensors = _full_tensors(full_folder)
    plain = sum(p.stat().st_size for p in full_folder.glob("*.safetensors"))
    changed, unchanged, dtypes = {}, 0, {}
    for name, value in tensors.items():
        reference = base.get(name)
        if reference is not None and reference.shape != value.shape:
            raise IncompatibleAdapter(f"{full_folder}: does not fit the base model — tensor shapes differ: "
                                      f"{name} {list(value.shape)} vs base {list(reference.shape)}")
        if reference is not None and reference.dtype == value.dtype and torch.equal(reference, value):
            unchanged += 1
            continue
        changed[name] = (value, reference)
        dtypes[name] = str(value.dtype).removeprefix("torch.")
    exact_bytes = sum(v.numel() * v.element_size() for v, _ in changed.values())
    chosen = encoding
    if encoding == "auto":
        chosen = "exact" if exact_bytes <= LOSSLESS_TARGET * plain else "int8"
    stored, max_error = {}, 0.0
    for name, (value, reference) in changed.items():
        if chosen == "exact" or reference is None or value.dim() != 2:
            stored[f"{name}::v"] = value.contiguous()
            continue
        delta = value.float() - reference.float()
        if chosen == "bf16":
            stored[f"{name}::d"] = delta.to(torch.bfloat16).contiguous()
            rebuilt = reference.float() + stored[f"{name}::d"].float()
        else:
            q, scale = _int8(delta)
            stored[f"{name}::q"], stored[f"{name}::scale"] = q, scale
            rebuilt = reference.float() + q.float() * scale[:, None]
        max_error = max(max_error, float((rebuilt.to(value.dtype).float() - value.float()).abs().max()))
    out_folder.mkdir(parents=True, exist_ok=True)
    lossless = max_error == 0.0
    meta = {"encoding": chosen, "lossless": lossless, "dtypes": dtypes}
    save_file(stored, str(out_folder / DELTA_FILE), metadata={"personae_delta": json.dumps(meta)})
    for path in sorted(full_folder.iterdir()):
        # config, generation config, tokenizer: everything but weights, pickles and old manifests
        if path.is_file() and path.suffix not in (".safetensors", *PICKLE_SUFFIXES) and path.name != MANIFEST \
                and not path.name.endswith(".safetensors.index.json") and not path.name.startswith("."):
            shutil.copy2(path, out_folder / path.name)
    size = (out_folder / DELTA_FILE).stat().st_size
    return {
        "encoding": chosen, "lossless": lossless, "max_abs_weight_error": max_error, "bytes": size,
        "plain_bytes": plain, "ratio": round(size / plain, 4) if plain else None,
        "changed_tensors": len(changed), "unchanged_tensors": unchanged,
    }


def delta_tensors(folder, base_folder) -> dict:
    """The fine-tuned values of every changed tensor of a stored delta, rebuilt from the base."""
    import torch
    from safetensors import safe_open

    path = Path(folder) / DELTA_FILE
    base = BaseTensors(base_folder)
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("personae_delta", "{}"))
        keys = list(handle.keys())
        values = {}
        for key in keys:
            name, _, part = key.partition("::")
            dtype = getattr(torch, meta.get("dtypes", {}).get(name, "float32"))
            if part == "v":
                values[name] = handle.get_tensor(key)
            elif part == "d":
                values[name] = (base.get(name).float() + handle.get_tensor(key).float()).to(dtype)
            elif part == "q":
                scale = handle.get_tensor(f"{name}::scale")
                delta = handle.get_tensor(key).float() * scale[:, None]
                values[name] = (base.get(name).float() + delta).to(dtype)
    return values


def delta_info(folder) -> dict:
    """The encoding metadata of a stored delta."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / DELTA_FILE), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("personae_delta", "{}"))


def load_full(version, base, dtype: str | None = None):
    """The fine-tuned model of a full version (delta or plain copy), rebuilt on the base; eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(getattr(version, "folder", version))
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else {}
    check_fingerprint(folder, manifest.get("base_fingerprint"), getattr(base, "fingerprint", None),
                      "load the base it was made from")
    if not (folder / DELTA_FILE).is_file():  # stored as a plain copy
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    else:
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(base.folder, config=config, dtype=torch.float32,
                                                     use_safetensors=True)
        state = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, value in delta_tensors(folder, base.folder).items():
                if name not in state:
                    raise IncompatibleAdapter(f"{folder}: tensor {name} is not in the base model")
                state[name].copy_(value.to(torch.float32))
    chosen = dtype or getattr(base, "dtype", "float32")
    if chosen in ("bfloat16", "float16"):
        model = model.to(getattr(torch, chosen))
    model.eval()
    if chosen == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model
