"""Make the built-in characters' shipped LoRA weights from the bootstrap pipeline, reproducibly.

Run from the repository root (about 15-45 minutes a character on 1 CPU thread):
    python -m plugins.characters.make_weights            # all three, on the packaged SmolLM2
    python -m plugins.characters.make_weights --measure  # and audit them against prompt-only

For each character, in a scratch data dir: its written dialogues (cards/dialogues/<id>.json) imported
as a bootstrap source and screened by the audit (`personae bootstrap --from`), optionally sampled
dialogues on top (`--samples N`: on the 135M base they are mostly word salad, so off by default),
curation (bootstrap + the card's example dialogues; no user logs), LoRA training with fixed seeds,
then the adapter is stored in fp16 under cards/weights/<id>/. The cards point at it
(extensions.personae.weights), so the registry adopts it as version 1 the first time the character answers.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "cards" / "weights"
WRITTEN_DIR = Path(__file__).parent / "cards" / "dialogues"
CHARACTERS = ("pixel", "professor-quill", "captain-mara-voss")
# Small on purpose: a few hundred KB to ~1.5 MB per character in fp16.
LORA = {"rank": 8, "alpha": 16, "dropout": 0.05, "epochs": 4.0, "lr": 5e-4, "batch_size": 2, "grad_accum": 2,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "max_length": 384, "seed": 42, "validation_share": 0.1, "patience": 3}
FILES = ("adapter_config.json", "adapter_model.safetensors")
TRUSTED_DROP = ("degenerate", "unsafe", "leakage")  # --trust-written: what still cuts an author's dialogue


def to_fp16(folder: Path) -> None:
    """Store the adapter's tensors in float16 (half the bytes; serving casts them to the base's dtype)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = {name: t.to(torch.float16).contiguous() for name, t in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def portable_config(folder: Path, base: str) -> None:
    """adapter_config.json without this machine's paths: the base named as its published id, modules sorted."""
    from runtime.models.base import DEFAULT_BASE

    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    if base == DEFAULT_BASE:
        config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the packaged GGUF holds
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])  # PEFT writes a set: order varies per run
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_one(character_id: str, base: str, out: Path, *, limit: int | None, samples: int, threads: int,
             epochs: float | None, measure: bool, min_examples: int | None = None, probes: int | None,
             progress: bool = True, data_dir: str = "", trust_written: bool = False,
             example_share: float | None = None) -> dict:
    """Bootstrap, curate, train and store one character's weights; return what was done and measured."""
    import torch

    from runtime.chat.build import build_engine
    from runtime.config import load_settings
    from runtime.plugins import get_plugin_manager
    from runtime.training import train
    from runtime.training.bootstrap import BootstrapResult, bootstrap
    from runtime.training.config import TrainingConfig
    from runtime.training.curate import curate
    from runtime.training.written import import_written

    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    with _scratch(data_dir, character_id) as scratch:
        settings = load_settings({"data_dir": scratch, "base_model": base})
        engine = build_engine(settings, pm=get_plugin_manager(settings.plugins_dir, reload=True))
        try:
            corpus = WRITTEN_DIR / f"{character_id}.json"
            # Trusted: the author's lines keep their voice even where the audit calls it misaligned (the audit's
            # Pixel is capitals and beeps; screening dropped her calm lines and the weights learned the capitals).
            drop = TRUSTED_DROP if trust_written else None
            written = (import_written(engine, character_id, corpus, replace_old=True, drop=drop)
                       if corpus.is_file() else None)
            boot = (bootstrap(engine, character_id, limit=limit, samples=samples, seed=0, progress=progress,
                              replace_old=written is None) if samples else BootstrapResult(character_id, ""))
            settings_for_training = {**LORA, "threads": threads}
            if epochs:
                settings_for_training["epochs"] = epochs
            if min_examples:
                settings_for_training["min_examples"] = min_examples
            if trust_written:
                settings_for_training["audit_filter"] = False  # the import's screen is the one wanted
            if example_share is not None:
                settings_for_training["example_share"] = example_share
            config = TrainingConfig.from_sources(settings_for_training)
            character = engine.catalog.get(character_id)
            dataset = curate(engine.store, character, settings, config=config)
            staging = Path(scratch) / "staging"
            trained = train(engine, character_id, "lora", config=config, examples=dataset, register=False,
                            progress=progress, output_dir=staging)
            target = out / character_id
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in FILES:
                shutil.copy2(staging / name, target / name)
            to_fp16(target)
            portable_config(target, base)
            record = {"character": character_id, "bootstrap": {k: v for k, v in vars(boot).items() if k != "run_id"},
                      "written": {k: v for k, v in vars(written).items() if k != "run_id"} if written else None,
                      "train_examples": len(dataset.train), "validation_examples": len(dataset.validation),
                      "bootstrap_examples": dataset.bootstrap_examples, "card_examples": dataset.card_examples,
                      "data_hash": dataset.data_hash,
                      "config": {k: getattr(config, k) for k in (*LORA, "example_share", "audit_filter")},
                      "metrics": {k: v for k, v in trained.metrics.items() if isinstance(v, (int, float, str))},
                      "bytes": sum(p.stat().st_size for p in target.iterdir())}
            if measure:
                record["audit"] = measure_against_prompt(engine, character_id, target, probes)
        finally:
            engine.close()
    return record


@contextmanager
def _scratch(data_dir: str, character_id: str):
    """The data dir to work in: the one given (kept, so its bootstrap is reused), else a temporary one."""
    if data_dir:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        yield data_dir
        return
    with tempfile.TemporaryDirectory(prefix=f"personae-weights-{character_id}-") as scratch:
        yield scratch


def measure_against_prompt(engine, character_id: str, folder: Path, probes: int | None) -> dict:
    """Audit prompt-only and the shipped weights on the same probes (none of them a bootstrap turn)."""
    from runtime.audit import run_audit
    from runtime.audit.probes import probe_set

    character = engine.catalog.get(character_id)
    # Single-turn probes: the 12-turn drift conversations answer one turn at a time, too slow on a shared CPU.
    chosen = [p for p in probe_set(character, limit=probes + 1 if probes else None) if p.kind != "drift"]
    version = engine.registry.add(folder, character_id, training={"source": "make_weights"})
    results = {}
    for label, pinned in (("prompt", "base"), ("weights", version.number)):
        report = run_audit(engine, character_id, pinned, probes=chosen, progress=False, report=False)
        replies = [v["reply"] for v in report.verdicts]
        results[label] = {**report.summary(), **form_shares(replies, card_lines(character)), "replies_sample": [
            {"prompt": v["prompt"], "reply": v["reply"], "verdict": v["verdict"]} for v in report.verdicts]}
    return results


def card_lines(character) -> list[str]:
    """The card's own lines a collapsed model repeats: greetings and example replies."""
    examples = re.findall(r"\{\{char\}\}:\s*(.+)", character.mes_example or "")
    return [t for t in (character.first_mes, *(character.alternate_greetings or []), *examples) if t]


def form_shares(replies: list[str], lines: list[str]) -> dict:
    """Share of replies the degeneration guard flags, and share that mostly repeat one of the card's lines."""
    from runtime.generation.guard import check_reply, copy_signal

    total = max(len(replies), 1)
    return {"degenerate": round(sum(bool(check_reply(r)) for r in replies) / total, 3),
            "card_copy": round(sum(bool(copy_signal(r, lines, share=0.5)) for r in replies) / total, 3)}


def measure_only(base: str, out: Path, character_ids: list[str], probes: int | None, threads: int) -> list[dict]:
    """Audit weights already in `out` against prompt-only, every character on one engine (one model load)."""
    import torch

    from runtime.chat.build import build_engine
    from runtime.config import load_settings
    from runtime.plugins import get_plugin_manager

    if threads:
        torch.set_num_threads(threads)
    records = []
    with tempfile.TemporaryDirectory(prefix="personae-weights-measure-") as scratch:
        settings = load_settings({"data_dir": scratch, "base_model": base})
        engine = build_engine(settings, pm=get_plugin_manager(settings.plugins_dir, reload=True))
        try:
            for character_id in character_ids:
                records.append({"character": character_id,
                                "audit": measure_against_prompt(engine, character_id, out / character_id, probes)})
        finally:
            engine.close()
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="", help="Base model folder (default: the packaged SmolLM2).")
    parser.add_argument("--characters", default=",".join(CHARACTERS), help="Comma-separated character ids.")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="Where <id>/ weight folders are written.")
    parser.add_argument("--limit", type=int, default=None, help="Bootstrap threads per character (default: all).")
    parser.add_argument("--samples", type=int, default=0,
                        help="Also bootstrap by sampling, this many replies per user turn (default: written only).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--epochs", type=float, default=None, help="Training passes (default 3).")
    parser.add_argument("--min-examples", type=int, default=None, help="Fewest usable examples (default 4).")
    parser.add_argument("--measure", action="store_true", help="Audit the weights against prompt-only.")
    parser.add_argument("--measure-only", action="store_true",
                        help="Only audit the weights already in --out against prompt-only (no bootstrap, no training).")
    parser.add_argument("--probes", type=int, default=None, help="How many audit probes to measure with.")
    parser.add_argument("--data-dir", default="", help="Work in this data dir and keep it (default: a temporary one).")
    parser.add_argument("--record", default="", help="Write what was done and measured here (JSON).")
    parser.add_argument("--trust-written", action="store_true",
                        help="Keep written lines the audit calls misaligned (still cut: degenerate, unsafe, leakage).")
    parser.add_argument("--example-share", type=float, default=None,
                        help="Share the card's example dialogues are repeated up to (default 0.2; 0: each once).")
    args = parser.parse_args(argv)
    from runtime.models.base import DEFAULT_BASE

    out = Path(args.out)
    wanted = [c.strip() for c in args.characters.split(",") if c.strip()]
    if args.measure_only:
        records = measure_only(args.base or DEFAULT_BASE, out, wanted, args.probes, args.threads)
        for record in records:
            print(record["character"], json.dumps({k: {m: v[m] for m in ("aligned", "minor", "leakage", "degenerate",
                                                                         "card_copy", "replies")}
                                                   for k, v in record["audit"].items()}))
        if args.record:
            Path(args.record).write_text(json.dumps(records, indent=1, ensure_ascii=False))
        return
    records = []
    for character_id in wanted:
        record = make_one(character_id, args.base or DEFAULT_BASE, out, limit=args.limit, samples=args.samples,
                          threads=args.threads, epochs=args.epochs, min_examples=args.min_examples, measure=args.measure,
                          probes=args.probes, data_dir=args.data_dir and str(Path(args.data_dir) / character_id),
                          trust_written=args.trust_written, example_share=args.example_share)
        records.append(record)
        summary = {k: record["audit"][k] for k in record.get("audit", {})} if args.measure else {}
        dialogues = record["bootstrap"]["dialogues"] + (record["written"] or {}).get("dialogues", 0)
        print(f"{character_id}: {dialogues} dialogues, {record['train_examples']} training "
              f"examples, {record['bytes']:,} bytes", json.dumps({k: {m: v[m] for m in ("aligned", "leakage")}
                                                                  for k, v in summary.items()}))
        if args.record:
            Path(args.record).write_text(json.dumps(records, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
