"""One training run with the transformers Trainer: LoRA, hybrid or full, saved as a registry-ready folder."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

from adapters.full_delta import load_full  # full versions may be stored as a delta from the base
from runtime.training.config import PREFERENCE_METHODS, TrainingConfig, TrainingError
from runtime.training.dataset import PadCollator, tokenize_examples
from runtime.training.plots import plot_losses


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def peak_memory_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes), or the GPU's peak when training there."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except Exception:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rich_progress_callback(enabled: bool, on_step=None):
    """A TrainerCallback drawing a rich progress bar with the latest losses (rank 0 only; global steps)."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self):
            self.progress = self.task = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not enabled or not state.is_world_process_zero:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]training[/]"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"),
                                     console=Console(stderr=True), transient=False)
            self.progress.start()
            self.task = self.progress.add_task("", total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress:
                self.progress.update(self.task, completed=state.global_step)
            if on_step is not None and state.is_world_process_zero:
                on_step(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress and logs:
                parts = [f"{k} {logs[k]:.4f}" for k in ("loss", "eval_loss") if k in logs]
                if parts:
                    self.progress.update(self.task, description=" ".join(parts))

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress:
                self.progress.stop()

    return RichProgress()


def _load_model(base_folder: Path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype, local_files_only=True, use_safetensors=True)


def wrap_model(model, config: TrainingConfig):
    """The model to train: a PEFT LoRA (hybrid: plus whole last layers via modules_to_save) or the model itself."""
    if config.method == "full":
        model.config.use_cache = False
        return model
    from peft import LoraConfig, get_peft_model

    layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    extra = {}
    if config.method == "hybrid":
        if config.modules_to_save:
            extra["modules_to_save"] = list(config.modules_to_save)
        else:
            full = max(1, min(config.full_layers, layers - 1))
            # LoRA adapts the lower layers; the last `full` layers are trained whole ("full where needed").
            extra["layers_to_transform"] = list(range(layers - full))
            extra["layers_pattern"] = "layers"
            # Every module holding weights in those layers (leaf names: what the registry checks and PEFT saves).
            wanted = tuple(f".layers.{i}." for i in range(layers - full, layers))
            extra["modules_to_save"] = sorted(
                name for name, module in model.named_modules()
                if any(part in f".{name}." for part in wanted) and list(module.parameters(recurse=False))
            )
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", **extra)
    model.config.use_cache = False
    return get_peft_model(model, lora)


def _preference_rows(preference, config: TrainingConfig) -> list[dict]:
    """The KTO / DPO rows this run needs ([] when it needs none), or a clear error."""
    if not config.preference_kind:
        return []
    from runtime.training.preference import PreferenceData, TooLittlePreference

    if isinstance(preference, dict):
        preference = PreferenceData.from_dict(preference)
    if preference is None:
        raise TooLittlePreference(f"{config.preference_kind} training needs preference data from the log, and none "
                                  "was given; train through `personae train`, which reads it")
    return preference.require(config.preference_kind, config.min_preference)


def _reference_model(base_folder: Path, reference: dict, dtype):
    """The active version as a model, to score on the same validation set."""
    folder = Path(reference["folder"])
    if reference.get("kind") == "full":
        from types import SimpleNamespace


        base = SimpleNamespace(folder=base_folder, fingerprint=None, dtype="float32")
        return load_full(folder, base).to(dtype)
    from peft import PeftModel

    return PeftModel.from_pretrained(_load_model(base_folder, dtype), folder)


def _unmark_prepared(trainer, model) -> None:
    """Let train() wrap a model that evaluate() already prepared (accelerate's mark makes it skip the wrap).

    evaluate()'s evaluation-only prepare marks the model as prepared; train()'s prepare then returns it
    without DistributedDataParallel, and every rank would step on its own gradients.
    """
    if getattr(model, "_is_accelerate_prepared", False):
        del model._is_accelerate_prepared
        if model in trainer.accelerator._models:
            trainer.accelerator._models.remove(model)


def run_training(base_folder: str | Path, dataset, config: TrainingConfig, output_dir: str | Path, *,
                 reference: dict | None = None, progress: bool = True, on_step=None, preference=None) -> dict:
    """Train on a CuratedDataset, save the weights into output_dir, return metrics (and the loss log).

    on_step(global_step, max_steps) is called on rank 0 after each optimiser step. preference (a
    PreferenceData) feeds method kto / dpo, or the preference stage that follows supervised training.
    """
    import torch

    base_folder, output_dir = Path(base_folder), Path(output_dir)
    previous_threads = torch.get_num_threads()
    if config.threads:
        # Oversubscribed OpenMP threads spin: on a busy 2-core box 1 thread trains ~10x faster than 2.
        torch.set_num_threads(config.threads)
    try:
        return _run_training(base_folder, dataset, config, output_dir, reference, progress, on_step, preference)
    finally:
        torch.set_num_threads(previous_threads)  # training must not change the serving process's threads


def _run_training(base_folder, dataset, config, output_dir, reference, progress, on_step, preference=None) -> dict:
    import torch
    from transformers import AutoTokenizer, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_folder, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows = tokenize_examples(tokenizer, dataset.train, config.max_length)
    eval_rows = tokenize_examples(tokenizer, dataset.validation, config.max_length)
    kind = config.preference_kind
    preference_rows = _preference_rows(preference, config)  # too little preference data fails before any training
    only_preference = config.method in PREFERENCE_METHODS
    if only_preference and not eval_rows:
        eval_rows = train_rows[:1]  # the loss gate's yardstick; kto/dpo never train on these rows
    if (not only_preference and len(train_rows) < max(1, config.min_examples)) or not eval_rows:
        raise TrainingError(
            f"{dataset.character}: only {len(train_rows)} training and {len(eval_rows)} validation examples are usable "
            f"(need at least {config.min_examples} and 1); log more conversations with this character, run "
            f"`personae bootstrap {dataset.character}`, or lower "
            "min_examples in [training]"
        )
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    model = wrap_model(_load_model(base_folder, dtype), config)
    scratch = output_dir.parent / (output_dir.name + ".checkpoints")
    args = TrainingArguments(
        output_dir=str(scratch), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs, max_steps=config.max_steps, learning_rate=config.learning_rate,
        warmup_steps=config.warmup, lr_scheduler_type=config.scheduler, weight_decay=config.weight_decay,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, save_only_model=True,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=1, seed=config.seed, data_seed=config.seed, report_to="none", disable_tqdm=True,
        use_cpu=not on_gpu, bf16=dtype == torch.bfloat16, include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0, remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every trainable weight takes part in each step
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience), _rich_progress_callback(progress, on_step)],
    )
    trainer.remove_callback(PrinterCallback)  # the rich bar (or nothing) instead of a dict per step on stdout
    # The same validation set, before training (= the base) or on the active version: the loss gate's yardstick.
    if reference is None:
        reference_loss = trainer.evaluate()["eval_loss"]
        _unmark_prepared(trainer, model)
    else:
        other = Trainer(model=_reference_model(base_folder, reference, dtype), args=args, eval_dataset=eval_rows,
                        data_collator=PadCollator(tokenizer.pad_token_id))
        reference_loss = other.evaluate()["eval_loss"]
        del other
    started = time.perf_counter()
    result = None if only_preference else trainer.train()
    seconds = time.perf_counter() - started
    # The best model is loaded at the end; its loss was measured already unless no evaluation ran.
    best = trainer.state.best_metric
    steps = trainer.state.global_step
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    history = list(trainer.state.log_history)
    stage = None
    if kind:
        from runtime.training.preference_stage import run_preference

        stage = run_preference(model, tokenizer, preference_rows, kind, config,
                               output_dir.parent / (output_dir.name + ".preference"), on_gpu=on_gpu,
                               bf16=dtype == torch.bfloat16, callbacks=[_rich_progress_callback(progress, on_step)])
        seconds += stage["metrics"]["seconds"]
        steps += stage["metrics"]["steps"]
        history += [{**entry, "step": entry.get("step", 0) + trainer.state.global_step, "stage": kind}
                    for entry in stage["log_history"]]
        best = None  # the preference stage moved the weights: measure the validation loss again
        shutil.rmtree(output_dir.parent / (output_dir.name + ".preference"), ignore_errors=True)
    val_loss = best if best is not None else trainer.evaluate()["eval_loss"]
    main = trainer.is_world_process_zero()
    # Every rank calls save_model: under FSDP / DeepSpeed it gathers the sharded weights; rank 0 alone writes.
    trainer.save_model(str(output_dir))
    trainer.accelerator.wait_for_everyone()  # no rank removes the checkpoints another one still reads
    if main:
        if config.method == "full":
            tokenizer.save_pretrained(output_dir)
        for stray in ("training_args.bin",):  # pickles never go into the registry
            (output_dir / stray).unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    metrics = {
        "train_loss": round(float(result.training_loss if result else stage["metrics"]["train_loss"]), 5),
        "val_loss": round(float(val_loss), 5),
        "reference_val_loss": round(float(reference_loss), 5),
        "reference": (reference or {}).get("ref", "base"),
        "steps": steps,
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / max(1, steps), 4),
        "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
        "tokens": tokens,
        "peak_memory_mb": peak_memory_mb(),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_examples": len(train_rows),
        "validation_examples": len(eval_rows),
        "bytes_on_disk": folder_bytes(output_dir) if output_dir.exists() else 0,
        "is_main_process": main,
        "processes": trainer.args.world_size,
        "global_batch": trainer.args.world_size * config.batch_size * config.grad_accum,
        "pid": os.getpid(),
    }
    if stage is not None:
        metrics["preference"] = stage["metrics"]
    return {"metrics": metrics, "log_history": history}


def write_run_files(output_dir: Path, outcome: dict, config: TrainingConfig, dataset, title: str) -> Path:
    """The loss plot and the run's log beside the weights (they travel into the registry with them)."""
    plot = plot_losses(outcome["log_history"], output_dir / "loss.png", title)
    (output_dir / "training.json").write_text(json.dumps(
        {"config": config.to_dict(), "metrics": outcome["metrics"], "log_history": outcome["log_history"],
         "data_hash": dataset.data_hash, "dropped": dataset.dropped, "last_message_id": dataset.last_message_id},
        indent=2, default=str))
    return plot
