"""Registry benchmarks on SmolLM2-135M: delta size and fidelity, extract fidelity per rank, add/verify time."""

from __future__ import annotations

import copy
import shutil
import time

from bench_utils import median_seconds, report
from helpers_adapters import train_tiny_full, train_tiny_lora

from adapters.convert import compare_models, extract_lora, merge_lora
from adapters.full_delta import load_full
from adapters.manifest import sha256_file
from adapters.registry import Registry
from runtime.store import Store

PROMPTS = ("Who are you?", "Tell me about the sea.")


def _compare(reference, candidate, tokenizer):
    return compare_models(reference, candidate, tokenizer, PROMPTS, new_tokens=8)


def _progress(text):
    print(f"[bench registry {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def test_registry_benchmarks(real_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rows = []
    registry = Registry(tmp_path / "adapters", Store(tmp_path / "personae.db"), base=real_base)
    tokenizer = real_base.tokenizer

    # --- a full fine-tune (1 AdamW step at a full-FT learning rate) stored as a delta ---
    full = train_tiny_full(real_base, tmp_path / "full", steps=1, lr=2e-5)
    _progress("full fine-tune trained")
    plain_bytes = sum(p.stat().st_size for p in full.glob("*.safetensors"))
    reference = AutoModelForCausalLM.from_pretrained(full).eval()
    for encoding in ("exact", "bf16", "int8"):
        started = time.perf_counter()
        version = registry.add(full, "bench", delta=encoding)
        encode_s = time.perf_counter() - started
        started = time.perf_counter()
        rebuilt = load_full(version, real_base)
        load_s = time.perf_counter() - started
        stats = version.manifest["delta"]
        fidelity = _compare(reference, rebuilt, tokenizer)
        rows += [
            {"metric": f"full delta {encoding}: bytes / plain copy", "value": stats["ratio"],
             "target": "<= 0.5" if encoding == "int8" else None},
            {"metric": f"full delta {encoding}: encoding chosen, lossless", "value": f"{stats['encoding']}, {stats['lossless']}"},
            {"metric": f"full delta {encoding}: max |logit diff| vs undeltaed", "value": fidelity["max_abs_logit_diff"]},
            {"metric": f"full delta {encoding}: top-1 / greedy agreement", "value":
                f"{fidelity['top1_agreement']:.4f} / {fidelity['greedy_agreement']:.4f}"},
            {"metric": f"full delta {encoding}: add s / load_full s", "value": f"{encode_s:.2f} / {load_s:.2f}"},
        ]
        del rebuilt
        _progress(f"delta {encoding} done")
    rows.append({"metric": "full fine-tune plain copy (MB)", "value": round(plain_bytes / 2**20, 1)})

    # --- extract: LoRA from the full fine-tune, per rank ---
    stored = registry.get("bench", 1)  # the exact delta
    svd_cache: dict = {}
    for rank in (4, 8, 16, 32):
        out = tmp_path / f"extract-{rank}"
        started = time.perf_counter()
        extracted = extract_lora(stored.folder, real_base, rank, out, svd_cache)
        seconds = time.perf_counter() - started
        model = PeftModel.from_pretrained(copy.deepcopy(real_base.model), str(out)).eval()
        fidelity = _compare(reference, model, tokenizer)
        rows.append({"metric": f"extract r={rank}: rel. Frobenius error mean / max", "value":
                     f"{extracted['mean_relative_error']:.3f} / {extracted['max_relative_error']:.3f}"})
        rows.append({"metric": f"extract r={rank}: top-1 / greedy agreement, max |logit diff|", "value":
                     f"{fidelity['top1_agreement']:.4f} / {fidelity['greedy_agreement']:.4f}, "
                     f"{fidelity['max_abs_logit_diff']:.3f}"})
        rows.append({"metric": f"extract r={rank}: MB, seconds", "value":
                     f"{extracted['bytes'] / 2**20:.1f}, {seconds:.1f}"})
        del model
        _progress(f"extract r={rank} done")

    # --- a real LoRA (r=16, attention projections): add / verify vs copying and hashing the files ---
    lora = train_tiny_lora(real_base, tmp_path / "lora", steps=1, rank=16,
                           target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    counter = iter(range(1000))
    add_s = median_seconds(lambda: registry.add(lora, "lora-bench"), repeat=3)
    copy_s = median_seconds(lambda: shutil.copytree(lora, tmp_path / f"copy-{next(counter)}"), repeat=3)
    version = registry.get("lora-bench", 1)
    verify_s = median_seconds(lambda: registry.verify(version), repeat=3)
    hash_s = median_seconds(lambda: [sha256_file(p) for p in lora.iterdir() if p.is_file()], repeat=3)
    rows += [
        {"metric": "LoRA r=16 q/k/v/o size (MB)", "value": round(_folder_bytes(lora) / 2**20, 2)},
        {"metric": "add LoRA (s) / plain copytree (s)", "value": f"{add_s:.3f} / {copy_s:.3f}"},
        {"metric": "add / copy ratio (checks, fsync, manifest, SQLite)", "value": round(add_s / copy_s, 2)},
        {"metric": "verify LoRA (s) / bare sha256 of its files (s)", "value": f"{verify_s:.4f} / {hash_s:.4f}"},
    ]
    _progress("add/verify timed")
    full_version = registry.get("bench", 3)  # int8 delta
    rows.append({"metric": "verify int8 full delta (s)", "value": round(median_seconds(
        lambda: registry.verify(full_version), repeat=3), 3)})

    # --- merge a LoRA into full weights, then extract it back at its own rank: should be near exact ---
    merged = registry.add(merge_lora(version.folder, real_base, tmp_path / "merged"), "lora-bench", parent=1)
    back = extract_lora(merged.folder, real_base, 16, tmp_path / "back")
    adapter = PeftModel.from_pretrained(copy.deepcopy(real_base.model), str(version.folder)).eval()
    fidelity = _compare(adapter, load_full(merged, real_base), tokenizer)
    rows += [
        {"metric": "merge LoRA -> full: delta encoding, bytes / plain", "value":
            f"{merged.manifest['delta']['encoding']}, {merged.manifest['delta']['ratio']}"},
        {"metric": "merge LoRA -> full: max |logit diff| vs adapter, greedy agreement", "value":
            f"{fidelity['max_abs_logit_diff']:.2e}, {fidelity['greedy_agreement']:.4f}"},
        {"metric": "extract r=16 from merged r=16 LoRA: max rel. error", "value": f"{back['max_relative_error']:.2e}"},
    ]
    report("registry", [{k: v for k, v in row.items() if v is not None} for row in rows])
    assert rows  # the table is the result; thresholds are read by people, not asserted on timing
