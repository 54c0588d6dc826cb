"""Test helpers: train tiny but real PEFT adapters and full fine-tunes on a loaded BaseModel.

Import from tests as `from helpers_adapters import train_tiny_lora, train_tiny_full`.
The base model passed in is never changed: training runs on a deep copy.
"""

from __future__ import annotations

import copy
from pathlib import Path

SENTENCES = (
    "Arr, the sea be calm tonight, and the stars be bright over the deck.",
    "Welcome aboard, traveller; mind the rigging and keep yer wits about ye.",
)


def _batch(tokenizer, texts=SENTENCES):
    """Tokenised sentences with labels (padding ignored by the loss)."""
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True)
    labels = encoded["input_ids"].clone()
    labels[encoded["attention_mask"] == 0] = -100
    return {**encoded, "labels": labels}


def _float_copy(base):
    """A trainable float copy of the base model (int8-quantised bases are not trainable)."""
    import torch

    model = copy.deepcopy(base.model)
    if base.dtype == "int8":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32, use_safetensors=True)
    model.train()
    return model


def _steps(model, tokenizer, steps: int, lr: float, texts=SENTENCES) -> list[float]:
    """A few AdamW steps on the sentences; returns the losses."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batch = _batch(tokenizer, texts)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def train_tiny_lora(base, folder, steps: int = 3, rank: int = 8, target_modules=("q_proj", "v_proj"),
                    seed: int = 0, modules_to_save=None, lr: float = 1e-2, texts=SENTENCES) -> Path:
    """Train a real PEFT LoRA (hybrid with modules_to_save) a few steps; save it in PEFT's format."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = _float_copy(base)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None, task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    _steps(peft_model, base.tokenizer, steps, lr, texts)
    folder = Path(folder)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def train_tiny_full(base, folder, steps: int = 2, lr: float = 1e-3, seed: int = 0, texts=SENTENCES,
                    freeze=()) -> Path:
    """Fully fine-tune a copy a few steps (freeze: name parts kept fixed); save config.json + model.safetensors."""
    import torch

    torch.manual_seed(seed)
    model = _float_copy(base)
    for name, param in model.named_parameters():
        param.requires_grad = not any(part in name for part in freeze)
    _steps(model, base.tokenizer, steps, lr, texts)
    model.eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
