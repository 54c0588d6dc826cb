"""`personae dataset`, `personae train` and `personae schedule ...`: retraining from the log."""

from __future__ import annotations

import click

from runtime.cli.common import UsageProblem, friendly_errors
from runtime.cli.common import engine as make_engine
from runtime.errors import PersonaeError


def _print_dropped(dataset) -> None:
    click.echo(f"{dataset.character}: {dataset.logged_turns} logged replies, {dataset.kept_turns} kept; "
               f"{len(dataset.train)} training examples ({dataset.card_examples} from the card's example "
               f"dialogues, {dataset.bootstrap_examples} bootstrapped), {len(dataset.validation)} validation")
    click.echo("dropped by rule:")
    for rule, count in dataset.dropped.items():
        click.echo(f"  {rule:<12} {count}")
    if dataset.scrubbed:
        click.echo("personal data replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(dataset.scrubbed.items())))
    for note in dataset.notes:
        click.echo(f"note: {note}")


@click.command()
@click.argument("name")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), help="Write chat-format JSONL here.")
@click.option("--split", type=click.Choice(["train", "validation", "all"]), default="train", show_default=True,
              help="Which examples to export.")
@friendly_errors
def dataset(name, export_path, split):
    """Curate NAME's training data from the log; show what each rule dropped; optionally export JSONL."""
    from runtime.cli.characters import _catalog
    from runtime.config import load_settings
    from runtime.store import Store
    from runtime.training import curate

    settings = load_settings()
    catalog = _catalog()
    character = catalog.get(name)
    curated = curate(Store(settings.db_path), character, settings, pm=catalog.pm)
    _print_dropped(curated)
    if export_path:
        count = curated.export(export_path, split)
        click.echo(f"wrote {count} examples to {export_path} ({{\"messages\": [...]}} per line, TRL/axolotl format)")


@click.command()
@click.argument("name")
@click.option("--method", type=click.Choice(["lora", "hybrid", "full", "kto", "dpo"]), default=None,
              help="lora (default), hybrid (LoRA + fully trained last layers), full; kto (from 👍/👎) or dpo (from "
                   "swipes): a LoRA trained on preferences alone.")
@click.option("--preference", type=click.Choice(["kto", "dpo"]), default=None,
              help="Then a preference stage: kto (👍/👎) or dpo (swipes) on top of the supervised weights.")
@click.option("--rank", type=int, help="LoRA rank (default 16).")
@click.option("--alpha", type=int, help="LoRA alpha (default 32).")
@click.option("--epochs", type=float, help="Passes over the data (default 3).")
@click.option("--lr", type=float, help="Peak learning rate (default 2e-4 LoRA, 2e-5 full).")
@click.option("--max-steps", type=int, help="Stop after this many steps.")
@click.option("--batch-size", type=int, help="Examples per step (default 4).")
@click.option("--max-length", type=int, help="Longest sequence in tokens (default 512).")
@click.option("--full-layers", type=int, help="hybrid: how many last layers train in full (default 2).")
@click.option("--gate", "gate_kind", type=click.Choice(["auto", "audit", "loss"]), default=None,
              help="How the candidate is judged (auto: audit when installed, else validation loss).")
@click.option("--no-gate", is_flag=True, help="Only register a candidate; don't promote or reject it.")
@click.option("--processes", type=click.IntRange(min=1),
              help="Train on N processes with `accelerate launch` (GPUs, or CPU ranks over gloo; default 1).")
@click.option("--accelerate-config", type=click.Path(dir_okay=False),
              help="accelerate config file for the processes (FSDP, DeepSpeed, GPU ids).")
@friendly_errors
def train(name, method, preference, rank, alpha, epochs, lr, max_steps, batch_size, max_length, full_layers, gate_kind,
          no_gate, processes, accelerate_config):
    """Train NAME on its curated conversations, register a candidate, gate it, promote or reject it.

    Several GPUs or CPU processes: --processes N [--accelerate-config FILE] (batch size is per process).
    """
    from runtime.training import retrain
    from runtime.training.config import TrainingConfig

    engine = make_engine()
    config = TrainingConfig.from_sources(
        engine.settings.training, method=method, preference=preference, rank=rank, alpha=alpha, epochs=epochs, lr=lr, max_steps=max_steps,
        batch_size=batch_size, max_length=max_length, full_layers=full_layers, gate=gate_kind,
        processes=processes, accelerate_config=accelerate_config,
    )
    name = engine.catalog.resolve(name)
    outcome = retrain(engine, name, config=config, trigger="cli", gate=not no_gate)
    _print_outcome(outcome)
    if outcome.status == "failed":
        raise UsageProblem(outcome.reason)


def _print_outcome(outcome) -> None:
    click.echo(outcome.summary())
    metrics = outcome.metrics or {}
    if metrics:
        keys = ("train_loss", "val_loss", "reference_val_loss", "steps", "processes", "seconds_per_step",
                "tokens_per_s", "peak_memory_mb", "bytes_on_disk")
        click.echo("  " + ", ".join(f"{k}={metrics[k]}" for k in keys if k in metrics))
    if outcome.loss_plot:
        click.echo(f"  loss curve: {outcome.loss_plot}")


@click.group()
def schedule():
    """Scheduled retraining: add, list, remove, run-now (runs inside `personae serve`)."""


@schedule.command("add")
@click.argument("name")
@click.option("--cron", required=True, help='Crontab line, e.g. "0 3 * * *" (every night at 03:00).')
@click.option("--method", type=click.Choice(["lora", "hybrid", "full", "kto", "dpo"]), default="lora", show_default=True)
@click.option("--preference", type=click.Choice(["kto", "dpo"]), default=None,
              help="A preference stage after supervised training (kto from 👍/👎, dpo from swipes).")
@click.option("--min-new-turns", type=int, default=50, show_default=True,
              help="Skip a run unless this many new curated turns were logged since the last training.")
@friendly_errors
def schedule_add(name, cron, method, preference, min_new_turns):
    """Retrain NAME on a cron schedule (persisted; `personae serve` runs it)."""
    from runtime.cli.characters import _catalog
    from runtime.config import load_settings
    from runtime.jobs import add_schedule

    settings = load_settings()
    name = _catalog().resolve(name)  # schedules are kept by id, whichever way the character was named
    added = add_schedule(settings, name, cron, method, min_new_turns, preference=preference or "")
    stage = f" + {preference}" if preference else ""
    click.echo(f"scheduled {name}: {method}{stage} at '{cron}' when >= {min_new_turns} new turns; "
               f"next run {added['next_run']:%Y-%m-%d %H:%M %Z}")


@schedule.command("list")
@friendly_errors
def schedule_list():
    """Schedules, their next run and the last training of each character."""
    from rich.console import Console
    from rich.table import Table

    from runtime.config import load_settings
    from runtime.jobs import list_schedules
    from runtime.store import Store
    from runtime.training.runs import runs

    settings = load_settings()
    rows = list_schedules(settings)
    if not rows:
        click.echo("no schedules (add one: personae schedule add NAME --cron \"0 3 * * *\")")
        return
    store = Store(settings.db_path)
    table = Table("character", "cron", "method", "min new turns", "next run", "last run")
    for row in rows:
        last = runs(store, row["character"], limit=1)
        last_text = f"{last[0]['state']} {last[0]['started'][:16]}" if last else "never"
        next_run = f"{row['next_run']:%Y-%m-%d %H:%M}" if row["next_run"] else "-"
        method = row["method"] + (f" + {row['preference']}" if row.get("preference") else "")
        table.add_row(row["character"], row["cron"], method, str(row["min_new_turns"]), next_run, last_text)
    Console().print(table)


@schedule.command("remove")
@click.argument("name")
@friendly_errors
def schedule_remove(name):
    """Remove NAME's schedule."""
    from runtime.config import load_settings
    from runtime.jobs import remove_schedule

    from runtime.cli.common import character_id

    try:
        name = character_id(name)
    except PersonaeError:
        pass  # a schedule of a character since removed is still removable by its id
    remove_schedule(load_settings(), name)
    click.echo(f"removed the schedule of {name}")


@schedule.command("run-now")
@click.argument("name")
@click.option("--method", type=click.Choice(["lora", "hybrid", "full", "kto", "dpo"]), default=None)
@click.option("--force", is_flag=True, help="Train even with fewer new turns than the schedule asks for.")
@friendly_errors
def schedule_run_now(name, method, force):
    """Run NAME's scheduled retraining now (low-priority subprocess, then gate) and wait for it."""
    from runtime.jobs import run_now

    engine = make_engine()
    outcome = run_now(engine, engine.catalog.resolve(name), method, force=force)
    _print_outcome(outcome)
    if outcome.status == "failed":
        raise UsageProblem(outcome.reason)


commands = [dataset, train, schedule]
