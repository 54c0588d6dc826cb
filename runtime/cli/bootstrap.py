"""`personae bootstrap NAME`: in-character training dialogues from the card alone."""

from __future__ import annotations

import click

from runtime.cli.common import UsageProblem, friendly_errors
from runtime.cli.common import engine as make_engine


@click.command()
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), help="Ask this many of the bank's conversations (default all).")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Replies sampled per user turn; the audit keeps the best.")
@click.option("--temperature", type=float, default=0.9, show_default=True, help="Sampling temperature.")
@click.option("--max-new-tokens", type=click.IntRange(min=8), default=96, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bank's order and the sampling.")
@click.option("--append", is_flag=True, help="Keep the dialogues of earlier runs (default: replace them).")
@click.option("--clear", is_flag=True, help="Only remove NAME's bootstrapped dialogues.")
@click.option("--from", "written", type=click.Path(dir_okay=False),
              help="Import hand-written dialogues from this JSON file instead of sampling (audited the same way).")
@friendly_errors
def bootstrap(name, limit, samples, temperature, max_new_tokens, seed, append, clear, written):
    """Write NAME's in-character training dialogues from its card (audited rejection sampling).

    They are stored apart from the users' logs and mixed into `personae dataset`, `personae train`,
    `personae compare` and scheduled retraining. `[training] teacher_url` adds a teacher's replies.
    """
    from runtime.training.bootstrap import bootstrap as run_bootstrap
    from runtime.training.bootstrap_store import clear_dialogues

    engine = make_engine()
    name = engine.catalog.resolve(name)
    if clear:
        click.echo(f"{name}: removed {clear_dialogues(engine.store, name)} bootstrapped dialogues")
        return
    if written:
        _import(engine, name, written, append)
        return
    result = run_bootstrap(engine, name, limit=limit, samples=samples, temperature=temperature,
                           max_new_tokens=max_new_tokens, seed=seed, replace_old=not append)
    click.echo(f"{name}: {result.dialogues} dialogues stored ({result.turns_kept} of {result.turns_asked} user "
               f"turns answered well) from {result.sampled} sampled replies in {result.seconds:.0f} s")
    if result.teacher_replies:
        click.echo(f"teacher: {result.teacher_replies} replies, {result.teacher_kept} kept")
    click.echo("rejected by rule:")
    for rule, count in result.rejected.items():
        click.echo(f"  {rule:<12} {count}")
    if not result.dialogues:
        raise UsageProblem(f"no reply to {name}'s {result.turns_asked} user turns passed the audit; try more "
                           "--samples, a lower --temperature, or a teacher ([training] teacher_url)")


def _import(engine, name: str, path: str, append: bool) -> None:
    """`--from FILE`: store NAME's written dialogues and say what the screen dropped."""
    from runtime.training.written import import_written

    result = import_written(engine, name, path, replace_old=not append)
    click.echo(f"{name}: {result.dialogues} of {result.read} written dialogues stored ({result.replies} replies)")
    if result.dropped:
        click.echo("cut or dropped by rule:")
    for rule, count in sorted(result.dropped.items()):
        click.echo(f"  {rule:<16} {count}")
    if not result.dialogues:
        raise UsageProblem(f"none of the {result.read} dialogues in {path} passed the audit's screen; see the "
                           "counts above")


commands = [bootstrap]
