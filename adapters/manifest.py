"""manifest.json: what a version folder holds, and the sha256 of every file in it."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from adapters.errors import IntegrityError, RegistryError

MANIFEST = "manifest.json"
FORMAT = "personae-adapter/1"
KINDS = ("lora", "hybrid", "full", "composite")


def now() -> str:
    """UTC time as ISO 8601 (the store's format)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict:
    """{name: {sha256, bytes}} of every regular file in a folder except the manifest."""
    return {
        path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def read_manifest(folder: Path) -> dict:
    """The manifest of a version folder (RegistryError if missing or unreadable)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{folder}: no {MANIFEST}; the version is incomplete") from None
    except ValueError as error:
        raise IntegrityError(f"{path}: not valid JSON ({error}); restore the version or remove it") from None


def write_json_durably(path: Path, data: dict) -> None:
    """Write JSON through a temporary file, fsync it, and rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (new or renamed files) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def verify_files(folder: Path, manifest: dict) -> None:
    """Check each file's size and sha256 against the manifest (IntegrityError names the first bad one)."""
    for name, entry in sorted(manifest.get("files", {}).items()):
        path = Path(folder) / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in {MANIFEST}); the version is damaged — remove it "
                                 "or restore the file")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise IntegrityError(f"{path}: {size} bytes, manifest says {entry['bytes']} (truncated or replaced); "
                                 "the version is damaged — remove it or restore the file")
        if sha256_file(path) != entry["sha256"]:
            raise IntegrityError(f"{path}: sha256 differs from {MANIFEST} (the file was modified); "
                                 "the version is damaged — remove it or restore the file")


def detect_kind(folder: Path) -> str:
    """lora / hybrid (PEFT adapter, with modules_to_save) or full (config.json + safetensors)."""
    folder = Path(folder)
    config = folder / "adapter_config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise RegistryError(f"{config}: not valid JSON ({str(error)[:200]})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{config}: expected a JSON object, got {type(data).__name__}")
        if data.get("peft_type", "LORA") != "LORA":
            raise RegistryError(f"{folder}: PEFT type {data.get('peft_type')!r} is not supported; use LoRA")
        return "hybrid" if data.get("modules_to_save") else "lora"
    if (folder / "config.json").is_file():
        return "full"
    if (folder / MANIFEST).is_file():
        kind = read_manifest(folder).get("kind")
        if kind in KINDS:
            return kind
    raise RegistryError(f"{folder}: neither a PEFT adapter (adapter_config.json) nor a model folder (config.json)")
