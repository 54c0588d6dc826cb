"""What is refused before anything is stored or loaded: pickles, and weights that don't fit the base."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from adapters.errors import IncompatibleAdapter, PickledWeights, RegistryError
from adapters.manifest import MANIFEST, detect_kind, read_manifest
from runtime.models.base import fingerprint_folder
from runtime.models.formats import PICKLE_SUFFIXES
from runtime.models.peft_files import PREFIX as PEFT_PREFIX  # how PEFT names its tensors

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
CONVERT_HINT = (
    "convert them to safetensors in a trusted environment (load, then "
    "`save_pretrained(folder, safe_serialization=True)`) and add that folder"
)


def read_header(path: Path) -> dict:
    """A safetensors file's header {name: {dtype, shape, data_offsets}} read without loading tensors.

    The safetensors library checks it first (every tensor's dtype and shape match its byte range, the
    ranges cover the file exactly), so a header claiming huge shapes or bytes it lacks is refused here.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy"):
            pass
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(handle.read(length))
    except (struct.error, ValueError, UnicodeDecodeError, SafetensorError, OSError) as error:
        raise RegistryError(f"{path}: not a readable safetensors file ({error}); re-export it") from None
    header.pop("__metadata__", None)
    return header


def read_json(path: Path) -> dict:
    """A JSON object from a file; RegistryError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise RegistryError(f"{path}: not valid JSON ({str(error)[:200]}); re-export the adapter") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a JSON object, got {type(data).__name__}; re-export the adapter")
    return data


def _is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_lora_config(path: Path, config: dict) -> None:
    """The fields of adapter_config.json that loading relies on have the types PEFT expects."""
    problems = []
    targets = config.get("target_modules")
    if targets is not None and not (isinstance(targets, str) or _is_text_list(targets)):
        problems.append(f"target_modules is {targets!r:.60}, not a module name, list of names or regex")
    elif isinstance(targets, str) and targets != "all-linear":
        try:
            re.compile(targets)
        except (re.error, RecursionError, OverflowError) as error:
            problems.append(f"target_modules {targets!r:.60} is not a valid regex ({error})")
    saved = config.get("modules_to_save")
    if saved is not None and not _is_text_list(saved):
        problems.append(f"modules_to_save is {saved!r:.60}, not a list of module names")
    rank = config.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank <= 65536:
        problems.append(f"r is {rank!r:.60}, not a rank between 1 and 65536")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha != alpha or abs(alpha) > 1e6:
        problems.append(f"lora_alpha is {alpha!r:.60}, not a number")
    for name in ("rank_pattern", "alpha_pattern"):
        if config.get(name) is not None and not isinstance(config.get(name), dict):
            problems.append(f"{name} is {config.get(name)!r:.60}, not a table")
    if problems:
        raise RegistryError(f"{path}: {'; '.join(problems)}; re-export the adapter with PEFT's save_pretrained")


def refuse_symlinks_out(folder: Path) -> None:
    """Refuse links that lead out of the folder: adding must never copy a file from elsewhere."""
    folder = Path(folder)
    inside = folder.resolve()
    for path in folder.iterdir():
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            raise RegistryError(f"{path}: a link to {os.readlink(path)}, outside the adapter folder; copy the "
                                f"real file into the folder (e.g. `cp -L`) and add that")


def refuse_pickles(folder: Path) -> list[str]:
    """Refuse a folder whose weights are pickled; return the names of extra pickles to skip.

    Pickles are never opened (unpickling runs arbitrary code). A pickle beside the safetensors
    weights (e.g. a Trainer's training_args.bin) is left behind, not copied.
    """
    folder = Path(folder)
    if folder.is_dir():
        refuse_symlinks_out(folder)
    if folder.is_file():
        if folder.suffix in PICKLE_SUFFIXES:
            raise PickledWeights(f"{folder}: pickled weights are never loaded; {CONVERT_HINT}")
        raise RegistryError(f"{folder}: expected a folder (PEFT adapter or model folder), got a file")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    weights = [p for p in folder.glob("*.safetensors")]
    if pickles and not weights:
        raise PickledWeights(f"{folder}: weights are pickled ({', '.join(pickles)}) and pickles are never loaded; "
                             f"{CONVERT_HINT}")
    return pickles


def _folder_of(base) -> Path:
    return Path(getattr(base, "folder", base))


def base_shapes(base) -> dict[str, list[int]]:
    """{parameter name: shape} of a base model, read from its safetensors headers (tied lm_head included)."""
    folder = _folder_of(base)
    shapes: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        shapes.update({name: entry["shape"] for name, entry in read_header(path).items()})
    config = base_config(base)
    if "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes and config.get(
        "tie_word_embeddings", True
    ):
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    return shapes


def base_config(base) -> dict:
    """The base model's config.json."""
    path = _folder_of(base) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def base_modules(shapes: dict) -> set[str]:
    """Module names of a model (parameter names without their last part)."""
    return {name.rsplit(".", 1)[0] for name in shapes if "." in name}


def _matches(target: str, module: str) -> bool:
    """PEFT's rule for a list entry: the module's full name or a dotted suffix of it."""
    return module == target or module.endswith("." + target)


def missing_targets(target_modules, modules: set[str]) -> list[str]:
    """Entries of target_modules (list or regex) that match no module of the base."""
    if not target_modules:
        return []
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return []
        return [] if any(re.fullmatch(target_modules, m) for m in modules) else [target_modules]
    return [t for t in target_modules if not any(_matches(t, m) for m in modules)]


def _fail(folder, part: str, detail: str, hint: str | None) -> None:
    suffix = f"; {hint}" if hint else ""
    raise IncompatibleAdapter(f"{folder}: does not fit the loaded base model — {part} differ: {detail}{suffix}")


def check_fingerprint(where, recorded: str | None, loaded: str | None, hint: str | None = None) -> None:
    """IncompatibleAdapter when weights made for one base (recorded) meet another (loaded); unknown passes."""
    if recorded and loaded and recorded != loaded:
        _fail(where, "base fingerprints", f"made for {recorded}, loaded base is {loaded}", hint)


def _shape_problems(items: list[tuple[str, list, list]]) -> str:
    shown = "; ".join(f"{name} {list(got)} vs base {list(want)}" for name, got, want in items[:3])
    more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
    return shown + more


def check_lora(folder: Path, shapes: dict) -> dict:
    """Target modules and tensor shapes of a PEFT LoRA folder against the base shapes."""
    config_path = folder / "adapter_config.json"
    config = read_json(config_path)
    check_lora_config(config_path, config)
    modules = base_modules(shapes)
    missing = missing_targets(config.get("target_modules"), modules)
    missing += [m for m in (config.get("modules_to_save") or []) if not any(_matches(m, x) for x in modules)]
    if missing:
        examples = sorted({m.rsplit(".", 1)[-1] for m in modules if "layers" in m})[:8]
        _fail(folder, "target modules", f"{missing} are not in the base model (its layers have {examples})",
              "train the adapter on this base model or load the base it was made for")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise RegistryError(f"{folder}: adapter_model.safetensors is missing")
    wrong, unknown = [], []
    for key, entry in read_header(weights).items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        shape = entry["shape"]
        if entry["dtype"] not in FLOAT_DTYPES:  # PEFT would cast or fail; never what was trained
            raise RegistryError(f"{weights}: tensor {key} is {entry['dtype']}, not a floating type "
                                f"({', '.join(FLOAT_DTYPES)}); re-export the adapter")
        match = re.match(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?\.weight$", name)
        if match:
            module, part = match.groups()
            base_shape = shapes.get(module + ".weight")
            if base_shape is None:
                unknown.append(module)
                continue
            out_features, in_features = base_shape[0], base_shape[-1]
            expected = {
                "lora_A": (1, in_features), "lora_B": (0, out_features),
                "lora_embedding_A": (1, out_features), "lora_embedding_B": (0, in_features),
            }[part]
            if len(shape) != 2 or shape[expected[0]] != expected[1] or shape[1 - expected[0]] > max(base_shape):
                wrong.append((f"{module}.{part}", shape, base_shape))
        else:
            name = name.replace(".modules_to_save.default", "")
            if name not in shapes:
                unknown.append(name)
            elif list(shape) != list(shapes[name]):
                wrong.append((name, shape, shapes[name]))
    if unknown:
        _fail(folder, "target modules", f"{sorted(set(unknown))[:3]} are not in the base model",
              "train the adapter on this base model or load the base it was made for")
    if wrong:
        _fail(folder, "tensor shapes", _shape_problems(wrong), "the adapter was made for a different model size")
    return config


def check_full(folder: Path, shapes: dict, base) -> None:
    """Architecture and tensor shapes of a full model folder (or a stored delta) against the base."""
    config = read_json(folder / "config.json")
    wanted = base_config(base)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if key in config and key in wanted and config[key] != wanted[key]:
            _fail(folder, "model configs", f"{key} is {config[key]!r}, base has {wanted[key]!r}",
                  "a full fine-tune is stored as a delta from the base it was trained from")
    wrong, unknown = [], []
    for path in sorted(folder.glob("*.safetensors")):
        for key, entry in read_header(path).items():
            # Delta files store name::q (int8) + name::scale (one per row), name::d or name::v.
            name, _, part = key.partition("::")
            if name not in shapes:
                unknown.append(name)
                continue
            expected = shapes[name][:1] if part == "scale" else shapes[name]
            if list(entry["shape"]) != list(expected):
                wrong.append((key, entry["shape"], expected))
    if unknown:
        _fail(folder, "tensor names", f"{sorted(set(unknown))[:3]} are not in the base model",
              "load the base model this fine-tune was made from")
    if wrong:
        _fail(folder, "tensor shapes", _shape_problems(wrong), "the fine-tune was made for a different model size")


def check_compatible(folder, base) -> str:
    """Refuse weights that don't fit the base (fingerprint, target modules, shapes); return the kind.

    `base` is a BaseModel or anything with `.folder` and `.fingerprint` (or a model folder path);
    only headers are read, no model is loaded.
    """
    folder = Path(folder)
    refuse_pickles(folder)
    fingerprint = getattr(base, "fingerprint", None)
    if fingerprint is None:
        fingerprint = fingerprint_folder(_folder_of(base))
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        check_fingerprint(folder, manifest.get("base_fingerprint"), fingerprint,
                          "load the base model it was trained on, or retrain it on this one")
        if manifest.get("kind") == "composite":
            return "composite"
    kind = detect_kind(folder)
    shapes = base_shapes(base)
    if kind in ("lora", "hybrid"):
        check_lora(folder, shapes)
    elif kind == "full":
        check_full(folder, shapes, base)
    return kind
