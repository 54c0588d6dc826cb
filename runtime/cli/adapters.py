"""`personae adapters ...`: the registry of character weights (list, show, add, promote, merge, extract)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from runtime.cli.common import (
    UsageProblem,
    character_id,
    friendly_errors,
    settings,
    weights_ref,
)


def _light_base(config):
    """The configured base model's folder and fingerprint, without loading it."""
    from types import SimpleNamespace

    from runtime.models.base import fingerprint_folder, resolve_model_folder

    folder = resolve_model_folder(config.base_model, config.cache_dir)
    return SimpleNamespace(folder=folder, fingerprint=fingerprint_folder(folder), dtype=config.dtype,
                           name=config.base_model)


def _registry(need_base: bool = True, base=None):
    from adapters.registry import Registry
    from runtime.plugins import get_plugin_manager
    from runtime.store import Store

    config = settings()
    base = base or (_light_base(config) if need_base else None)
    return Registry.for_settings(config, Store(config.db_path), pm=get_plugin_manager(config.plugins_dir), base=base)


def _loaded_base():
    from rich.console import Console

    from runtime.models.base import load_base_model

    config = settings()
    with Console(stderr=True).status(f"Loading base model {config.base_model}…"):
        return load_base_model(config.base_model, config.cache_dir, "float32", "cpu")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _row(version) -> dict:
    manifest = version.manifest
    return {
        "ref": version.ref, "character": version.character, "number": version.number, "kind": version.kind,
        "state": version.state, "created": version.created, "bytes": version.bytes, "parent": manifest.get("parent"),
        "reason": version.reason, "audit": version.audit, "delta": manifest.get("delta"),
        "parts": manifest.get("parts"), "folder": str(version.folder),
    }


@click.group()
def adapters():
    """The registry of character weights: versions, states, refusals, merge and extract."""


@adapters.command(name="list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@friendly_errors
def list_versions(name, as_json):
    """List stored versions (of one character, or all)."""
    from rich.console import Console
    from rich.table import Table

    registry = _registry(need_base=False)
    name = character_id(name, registry) if name else None
    versions = registry.versions(name)
    if as_json:
        click.echo(json.dumps([_row(v) for v in versions], indent=2))
        return
    if not versions:
        click.echo(f"No stored versions{' of ' + name if name else ''}; add one with `personae adapters add PATH "
                   "--character NAME`")
        return
    table = Table("version", "kind", "state", "size", "created", "audit", "note")
    for v in versions:
        audit = ", ".join(f"{k}={v.audit[k]:.2f}" for k in ("aligned", "leakage") if isinstance(v.audit.get(k), float))
        style = "bold green" if v.state == "active" else ("dim" if v.state in ("retired", "rejected", "failed") else "")
        table.add_row(v.ref, v.kind, v.state, _size(v.bytes), v.created[:19].replace("T", " "), audit, v.reason,
                      style=style)
    Console().print(table)


def serving(version, config=None) -> str:
    """Where a version can be served: vLLM as a LoRA, vLLM on an endpoint of its own, or local only (and why)."""
    config = config or settings()
    table = config.plugin_settings("vllm")
    now = f"; backend now: {config.backend}"
    ref = f"{version.character}@{version.number}"
    adapter_config = version.folder / "adapter_config.json"
    if version.kind == "full":
        from adapters.materialise import materialised_folder

        folder = materialised_folder(version.folder.parent.parent, version.character, version.number)
        full_urls = table.get("full_urls") or {}
        built = f"materialised at {folder}" if folder.is_dir() else "not materialised yet"
        if ref in full_urls:
            return (f"vLLM own endpoint {full_urls[ref]} ([plugins.vllm] full_urls; it must serve the materialised "
                    f"folder, {built}), or local{now}")
        if table.get("full_command"):
            return (f"vLLM own endpoint, started by Personae on the materialised folder ([plugins.vllm] "
                    f"full_command; {built}), or local{now}")
        return ("local only (a full fine-tune: vLLM serves it only as a model of its own; set [plugins.vllm] "
                f"full_command or full_urls to give it one){now}")
    if adapter_config.is_file() and json.loads(adapter_config.read_text()).get("modules_to_save"):
        return f"local only (vLLM refuses LoRA adapters with modules_to_save; backend vllm answers it locally){now}"
    return f"vLLM LoRA (loaded at run time as {ref}), or local{now}"


@adapters.command(name="show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Output the manifest as JSON.")
@friendly_errors
def show_version(ref, as_json):
    """Show one version (NAME@V, or NAME for the active one) and check its files."""
    from adapters.errors import RegistryError

    registry = _registry(need_base=False)
    version = registry.resolve(weights_ref(ref, registry))
    try:
        registry.verify(version)
        integrity = "ok (every sha256 matches)"
    except RegistryError as error:
        integrity = f"DAMAGED: {error}"
    if as_json:
        click.echo(json.dumps({**_row(version), "integrity": integrity, "serving": serving(version),
                               "manifest": version.manifest}, indent=2))
        return
    manifest = version.manifest
    click.echo(f"{version.ref}  {version.kind}  {version.state}{'  (' + version.reason + ')' if version.reason else ''}")
    click.echo(f"folder:    {version.folder}")
    click.echo(f"created:   {version.created}   parent: {manifest.get('parent') or '-'}")
    click.echo(f"base:      {manifest.get('base_fingerprint') or 'unknown'}")
    if manifest.get("training"):
        click.echo(f"training:  {json.dumps(manifest['training'])}")
    if manifest.get("data_hash"):
        click.echo(f"data:      {manifest['data_hash']}")
    if manifest.get("delta"):
        d = manifest["delta"]
        click.echo(f"delta:     {d['encoding']}, {'lossless' if d['lossless'] else 'lossy'}, "
                   f"{_size(d['bytes'])} = {d['ratio']:.3f}× a plain copy ({_size(d['plain_bytes'])})")
    if manifest.get("parts"):
        parts = " + ".join(f"{p['ref']}×{p['weight']}" for p in manifest["parts"])
        click.echo(f"composed:  {parts} ({manifest.get('combination')})")
    if version.audit:
        click.echo(f"audit:     {json.dumps(version.audit)}")
    for file, entry in sorted(manifest.get("files", {}).items()):
        click.echo(f"  {file:32} {_size(entry['bytes']):>10}  sha256:{entry['sha256'][:16]}…")
    click.echo(f"serving:   {serving(version)}")
    click.echo(f"integrity: {integrity}")


@adapters.command(name="materialise")
@click.argument("ref")
@friendly_errors
def materialise_version(ref):
    """Write a full version as a plain model folder (safetensors, config, tokenizer) and print its path.

    For a vLLM server of its own ([plugins.vllm] full_urls): start it on this folder. Built once,
    reused, and deleted when the version is removed.
    """
    registry = _registry()
    version = registry.verify(registry.resolve(weights_ref(ref, registry)))
    click.echo(registry.materialise(version))


@adapters.command(name="add")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--character", "-c", required=True, help="The character these weights belong to.")
@click.option("--activate", is_flag=True, help="Make it the active version at once.")
@click.option("--delta", type=click.Choice(["auto", "exact", "int8", "bf16", "none"]), default="auto",
              show_default=True, help="How a full fine-tune is stored (auto: lossless if ≤ 0.5× a copy, else int8).")
@friendly_errors
def add_version(path, character, activate, delta):
    """Add a PEFT adapter or model folder (PATH) as the character's next version.

    Without PATH, the weights the character's plugin package ships are added.
    """
    from runtime.cli.common import catalog

    registry = _registry()
    if path is None:
        version = registry.add_from_character(catalog().get(character), activate=activate)
    else:
        version = registry.add(path, character_id(character, registry), activate=activate, delta=delta)
    if version.reused:
        click.echo(f"Already stored as {version.ref} ({version.kind}, {version.state}): the same files; nothing added")
        return
    note = ""
    if version.manifest.get("delta"):
        d = version.manifest["delta"]
        note = f" (delta {d['encoding']}, {'lossless' if d['lossless'] else 'lossy'}, {d['ratio']:.3f}× a plain copy)"
    click.echo(f"Added {version.ref} ({version.kind}, {version.state}){note}")
    for skipped in version.manifest.get("skipped", []):
        click.echo(f"warning: left out {skipped} (pickles are never stored or loaded)", err=True)


@adapters.command(name="promote")
@click.argument("name")
@click.argument("number", type=int)
@friendly_errors
def promote(name, number):
    """Make version NUMBER the character's active weights (running servers swap it in)."""
    registry = _registry()
    version = registry.promote(character_id(name, registry), number)
    click.echo(f"{version.ref} is now active")


@adapters.command(name="rollback")
@click.argument("name")
@friendly_errors
def rollback(name):
    """Reject the active version and reactivate the one before it (or the bare base)."""
    registry = _registry()
    name = character_id(name, registry)
    version = registry.rollback(name)
    click.echo(f"{name} rolled back to {version.ref}" if version else f"{name} rolled back to the bare base model")


@adapters.command(name="remove")
@click.argument("name")
@click.argument("number", type=int)
@click.option("--yes", is_flag=True, help="Don't ask for confirmation.")
@friendly_errors
def remove(name, number, yes):
    """Delete a stored version's files (never the active one)."""
    registry = _registry(need_base=False)
    name = character_id(name, registry)
    version = registry.get(name, number)
    if not yes:
        click.confirm(f"Delete {version.ref} ({version.kind}, {version.state}) and its files?", abort=True)
    registry.remove(name, number)
    click.echo(f"Removed {version.ref}")


@adapters.command(name="compose")
@click.argument("name")
@click.argument("parts", nargs=-1, required=True)
@click.option("--combination", type=click.Choice(["cat", "linear"]), default="cat", show_default=True)
@click.option("--activate", is_flag=True, help="Make it the active version at once.")
@friendly_errors
def compose_versions(name, parts, combination, activate):
    """Compose LoRA versions with weights into one version: PARTS like pixel@1=1.0 pixel@2=0.5."""
    registry = _registry()
    name = character_id(name, registry)
    pairs = []
    for part in parts:
        ref, _, weight = part.partition("=")
        ref = weights_ref(ref, registry)
        try:
            pairs.append((ref, float(weight or 1.0)))
        except ValueError:
            raise UsageProblem(f"{part!r}: write each part as NAME@V=WEIGHT, e.g. pixel@1=0.5") from None
    version = registry.add_composite(name, pairs, combination=combination, activate=activate)
    click.echo(f"Added {version.ref} (composite of {', '.join(parts)}, {combination}, {version.state})")


@adapters.command(name="merge")
@click.argument("name")
@click.argument("number", type=int)
@click.option("--activate", is_flag=True, help="Make the merged version active.")
@friendly_errors
def merge(name, number, activate):
    """Fold a LoRA version into full weights (peft merge_and_unload) and store it as a new full version."""
    from adapters.convert import merge_lora

    base = _loaded_base()
    registry = _registry(base=base)
    name = character_id(name, registry)
    source = registry.checked(name, number)
    if source.kind not in ("lora", "hybrid", "composite"):
        raise UsageProblem(f"{source.ref} is a {source.kind} version; merge takes a LoRA, hybrid or composite")
    with registry.scratch() as scratch:
        merge_lora(source.folder, base, Path(scratch) / "merged")
        version = registry.add(Path(scratch) / "merged", name, kind="full", parent=number, activate=activate,
                               training={"merged_from": source.ref})
    d = version.manifest["delta"]
    click.echo(f"Merged {source.ref} into {version.ref} (full; delta {d['encoding']}, "
               f"{'lossless' if d['lossless'] else 'lossy'}, {_size(d['bytes'])})")


@adapters.command(name="extract")
@click.argument("name")
@click.argument("number", type=int)
@click.option("--rank", "-r", type=int, default=16, show_default=True, help="LoRA rank of the extracted adapter.")
@click.option("--activate", is_flag=True, help="Make the extracted version active.")
@friendly_errors
def extract(name, number, rank, activate):
    """Turn a full version into a LoRA by truncated SVD of each linear layer's delta; report the fit."""
    import copy

    from peft import PeftModel

    from adapters.convert import compare_models, extract_lora
    from adapters.full_delta import load_full

    base = _loaded_base()
    registry = _registry(base=base)
    name = character_id(name, registry)
    source = registry.checked(name, number)
    if source.kind != "full":
        raise UsageProblem(f"{source.ref} is a {source.kind} version; extract takes a full fine-tune")
    with registry.scratch() as scratch:
        folder = Path(scratch) / "extracted"
        report = extract_lora(source.folder, base, rank, folder)
        fidelity = compare_models(load_full(source, base), PeftModel.from_pretrained(copy.deepcopy(base.model),
                                                                                      str(folder)), base.tokenizer)
        summary = {k: report[k] for k in ("rank", "layers", "mean_relative_error", "max_relative_error")}
        version = registry.add(folder, name, kind="lora", parent=number, activate=activate,
                               training={"extracted_from": source.ref, "rank": rank},
                               metrics={"extract": {**summary, **fidelity, "dropped": report["dropped"]}})
    click.echo(f"Extracted {version.ref} (LoRA r={rank}, {_size(report['bytes'])}) from {source.ref}")
    worst = sorted(report["relative_error"].items(), key=lambda item: -item[1])[:5]
    click.echo(f"relative Frobenius error per layer: mean {report['mean_relative_error']:.3f}, "
               f"max {report['max_relative_error']:.3f} over {report['layers']} layers; worst: "
               + ", ".join(f"{k.removeprefix('model.')} {v:.3f}" for k, v in worst))
    click.echo(f"vs the full model on {fidelity['prompts']} prompts: top-1 agreement {fidelity['top1_agreement']:.1%}, "
               f"greedy agreement {fidelity['greedy_agreement']:.1%}, max |logit diff| "
               f"{fidelity['max_abs_logit_diff']:.3f}")
    if report["dropped"]:
        click.echo(f"not representable as LoRA (left at the base values): {len(report['dropped'])} tensors "
                   f"(embeddings, norms), e.g. {', '.join(list(report['dropped'])[:3])}")


commands = [adapters]
