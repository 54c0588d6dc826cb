"""Full versions as plain model folders (model.safetensors, config, tokenizer) for engines that load a folder.

A full version is stored as a delta from the base (full_delta.py); a vLLM server of its own needs the
whole model. The folder is built once under REGISTRY/.materialised/NAME@N (temp folder, marker last,
rename), reused while its marker matches the version and the base, and deleted with the version.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from pathlib import Path

from adapters.errors import RegistryError
from adapters.full_delta import DELTA_FILE, BaseTensors, _full_tensors, delta_tensors
from adapters.manifest import MANIFEST, fsync_dir, write_json_durably
from adapters.safety import check_fingerprint
from runtime.models.formats import PICKLE_SUFFIXES

MATERIALISED = ".materialised"
MARKER = "personae-materialised.json"
WEIGHTS = "model.safetensors"
# What a model folder needs besides weights and config; taken from the base when the version lacks them.
BASE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
              "added_tokens.json", "chat_template.jinja", "generation_config.json")


def materialised_folder(root, character: str, number: int) -> Path:
    """Where a version's plain model folder lives (whether built or not)."""
    return Path(root) / MATERIALISED / f"{character}@{number}"


def _source(version, base_fingerprint) -> dict:
    """What the folder is built from: a different version or base means a rebuild."""
    manifest = version.manifest
    return {"ref": f"{version.character}@{version.number}", "content_sha256": manifest.get("content_sha256"),
            "base_fingerprint": manifest.get("base_fingerprint") or base_fingerprint}


def is_current(folder: Path, source: dict) -> bool:
    """Whether a built folder's marker matches its source (a crash before the marker leaves none)."""
    try:
        return json.loads((folder / MARKER).read_text()) == source
    except (OSError, ValueError):
        return False


def _tensors(folder: Path, base_folder: Path) -> dict:
    """Every tensor of the fine-tuned model: the base's, with the delta's changed ones rebuilt."""
    if not (folder / DELTA_FILE).is_file():
        return _full_tensors(folder)  # stored as a plain copy (`--delta none`)
    base = BaseTensors(base_folder)
    changed = delta_tensors(folder, base_folder)
    tensors = {name: changed.pop(name) if name in changed else base.get(name)
               for name in base.where if name not in base.alias}
    config = json.loads((folder / "config.json").read_text())
    if config.get("tie_word_embeddings", True):
        changed.pop("lm_head.weight", None)  # tied: the embeddings are the head (vLLM ignores one written here)
    tensors.update(changed)  # tensors the base file lacks (an untied head)
    return {name: value.contiguous() for name, value in tensors.items()}


def _build(version, base_folder: Path, target: Path) -> None:
    from safetensors.torch import save_file

    folder = Path(version.folder)
    target.mkdir(parents=True)
    # Fixed metadata and safetensors' own ordering: the same version gives the same bytes every time.
    save_file(_tensors(folder, base_folder), str(target / WEIGHTS), metadata={"format": "pt"})
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix not in (".safetensors", *PICKLE_SUFFIXES) and path.name != MANIFEST:
            shutil.copy2(path, target / path.name)
    for name in BASE_FILES:
        if not (target / name).exists() and (Path(base_folder) / name).is_file():
            shutil.copy2(Path(base_folder) / name, target / name)
    for path in target.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def materialise(version, base, root) -> Path:
    """The full version as a plain model folder: built once (atomically), then reused."""
    if version.kind != "full":
        raise RegistryError(f"{version.character}@{version.number} is a {version.kind} version; only full "
                            "fine-tunes are materialised (LoRA versions load as adapters)")
    fingerprint = getattr(base, "fingerprint", None)
    check_fingerprint(version.folder, version.manifest.get("base_fingerprint"), fingerprint,
                      "materialise it with the base it was made from")
    final = materialised_folder(root, version.character, version.number)
    source = _source(version, fingerprint)
    if is_current(final, source):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".lock", "a+") as lock:  # one builder at a time, across processes
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current(final, source):  # another process built it while we waited
            return final
        # .tmp-PID- / .trash-PID- names: the registry's start-up sweep deletes them if this process dies.
        temporary = final.parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _build(version, Path(base.folder), temporary)
            write_json_durably(temporary / MARKER, source)  # last: a folder without it is never used
            if final.exists():  # a stale build (older base or damaged): out of the way first
                discard(final)
            os.rename(temporary, final)
            fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    return final


def discard(folder: Path) -> None:
    """Delete a materialised folder (renamed away first, so nobody loads a half-deleted one)."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(root, keep: set[str]) -> list[str]:
    """Delete materialised folders of versions not in `keep` ('NAME@N'); returns what went."""
    home = Path(root) / MATERIALISED
    gone = []
    for folder in sorted(home.glob("*@*")) if home.is_dir() else []:
        if folder.is_dir() and folder.name not in keep:
            discard(folder)
            gone.append(folder.name)
    return gone
