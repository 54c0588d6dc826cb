"""A preference run with TRL: KTOTrainer on 👍/👎 rows or DPOTrainer on swipe pairs, on the model being trained."""

from __future__ import annotations

import time
from pathlib import Path

from runtime.training.config import TrainingConfig, TrainingError


def _balance(rows: list[dict]) -> tuple[float, float]:
    """KTO's desirable / undesirable weights so both kinds weigh the same (the KTO paper's rebalancing)."""
    liked = sum(1 for row in rows if row["label"])
    disliked = len(rows) - liked
    if not liked or not disliked:
        return 1.0, 1.0
    return (1.0, liked / disliked) if liked >= disliked else (disliked / liked, 1.0)


def _length(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))


def fit_rows(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Drop the oldest context turns of rows too long for max_length (TRL would cut the reply off the end)."""
    fitted = []
    for row in rows:
        prompt = list(row["prompt"])
        longest = max((row[key] for key in ("chosen", "rejected", "completion") if key in row),
                      key=lambda reply: len(reply[0]["content"]))
        # System card first, the user's last message last: only what lies between may go.
        while len(prompt) > 2 and _length(tokenizer, prompt + longest) > max_length:
            del prompt[1]
        fitted.append({**row, "prompt": prompt})
    return fitted


def run_preference(model, tokenizer, rows: list[dict], kind: str, config: TrainingConfig, scratch: Path, *,
                   on_gpu: bool, bf16: bool, callbacks=()) -> dict:
    """Train `model` in place with TRL's KTO or DPO trainer; return its metrics and loss log.

    A PEFT model with a trained adapter is its own reference: TRL copies the adapter as a frozen "ref"
    adapter (removed again here); a full model gets a frozen copy from TRL.
    """
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    common = dict(
        output_dir=str(scratch), per_device_train_batch_size=max(2, config.batch_size),
        gradient_accumulation_steps=config.grad_accum, num_train_epochs=config.preference_epochs,
        max_steps=config.preference_steps, learning_rate=config.preference_learning_rate, lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup, beta=config.beta, max_length=config.max_length, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=config.seed,
        data_seed=config.seed, use_cpu=not on_gpu, bf16=bf16, dataloader_num_workers=0,
    )
    data = Dataset.from_list(fit_rows(rows, tokenizer, config.max_length))
    if kind == "kto":
        from trl import KTOConfig, KTOTrainer

        desirable, undesirable = _balance(rows)
        # KTO's KL estimate pairs each prompt with another row's completion: a batch needs at least two rows.
        args = KTOConfig(**common, desirable_weight=desirable, undesirable_weight=undesirable)
        trainer = KTOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=list(callbacks))
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=data, processing_class=tokenizer,
                             callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    if len(trainer.train_dataset) == 0:  # TRL drops rows whose reply did not fit at all
        raise TrainingError(f"none of the {len(rows)} {kind.upper()} rows fits in max_length={config.max_length} "
                            "tokens with the character's card: raise max_length in [training] (or --max-length)")
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    if hasattr(model, "peft_config") and "ref" in model.peft_config:
        model.delete_adapter("ref")  # the frozen reference is not part of the character's weights
        model.set_adapter("default")
    history = list(trainer.state.log_history)
    last = next((entry for entry in reversed(history) if any(k.startswith("rewards/") for k in entry)), {})
    metrics = {
        "kind": kind, "rows": len(rows), "steps": trainer.state.global_step, "seconds": round(seconds, 3),
        "train_loss": round(float(result.training_loss), 5), "learning_rate": config.preference_learning_rate,
        "beta": config.beta,
        **{key.replace("/", "_"): round(float(value), 5) for key, value in last.items() if key.startswith("rewards/")},
    }
    if kind == "kto":
        metrics.update(liked=sum(1 for row in rows if row["label"]), disliked=sum(1 for row in rows if not row["label"]))
    return {"metrics": metrics, "log_history": history}
