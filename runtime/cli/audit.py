"""`personae audit ...` and `personae compare ...`: persona audits, scoring replies, the showdown."""

from __future__ import annotations

import json
from pathlib import Path

import click

from runtime.cli.common import UsageProblem, friendly_errors, settings
from runtime.errors import PersonaeError


class AuditGroup(click.Group):
    """`personae audit NAME` runs an audit; `personae audit score ...` and friends are subcommands."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=AuditGroup)
def audit():
    """Persona audits: `personae audit NAME [--version V]`, `personae audit score CARD REPLIES.jsonl`."""


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _or_dash(value, form: str) -> str:
    return "-" if value is None else form.format(value)


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Persona audit of {report.character} ({report.version}), {len(report.verdicts)} replies")
    for column in ("aligned", "minor", "misaligned", "leakage", "seconds", "tokens/s"):
        table.add_column(column, justify="right")
    table.add_row(_pct(report.aligned), _pct(report.minor), _pct(report.misaligned), _pct(report.leakage),
                  f"{report.seconds:.0f}", f"{report.tokens_per_s or 0:.1f}")
    console.print(table)
    turns = Table(title="Alignment by turn index")
    for column in ("turn", "replies", "aligned", "misaligned"):
        turns.add_column(column, justify="right")
    for row in report.by_turn:
        turns.add_row(str(row["turn"]), str(row["replies"]), _pct(row["aligned"]), _pct(row["misaligned"]))
    console.print(turns)
    if report.report_html:
        console.print(f"report: {report.report_html}")


@audit.command(name="run")
@click.argument("name")
@click.option("--version", "version", default=None, help="Weights version to audit (a number, or 'base'); default: active.")
@click.option("--probes", "probe_file", type=click.Path(dir_okay=False), default=None,
              help="Extra probes: a JSONL or JSON file of {question | turns, must, must_not}.")
@click.option("--only-file", is_flag=True, help="Ask only the probes of --probes, not the built-in ones.")
@click.option("--limit", type=int, default=None, help="Ask at most this many probes (one of each kind first).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def run_command(name, version, probe_file, only_file, limit, as_json):
    """Ask NAME the probes, score every reply, store the run and write the HTML report."""
    from runtime.audit import run_audit
    from runtime.audit.probes import load_probe_file, probe_set
    from runtime.cli.common import engine as make_engine

    engine = make_engine()
    try:
        character = engine.catalog.get(name)
        extra = []
        if probe_file:
            extra, errors = load_probe_file(probe_file)
            for problem in errors:
                click.echo(f"warning: {problem} (skipped; the other probes still run)", err=True)
            if only_file and not extra:
                raise UsageProblem(f"{probe_file}: no usable probes; fix the lines above")
        probes = extra if only_file else probe_set(character, limit=limit, extra=extra)
        if only_file and limit:
            probes = probes[:limit]
        report = run_audit(engine, character.id, version, probes=probes, progress=not as_json)
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps({**report.summary(), "character": report.character, "version": report.version,
                               "by_turn": report.by_turn, "report": str(report.report_html)}))
    else:
        _print_report(report)


def _character(card: str):
    """A card file, or the name of an installed character."""
    from runtime.characters import load_card
    from runtime.cli.characters import _catalog

    path = Path(card)
    if path.is_file():
        return load_card(path)
    return _catalog().get(card)


def _read_replies(path: Path) -> tuple[list, list]:
    """(line number, item) for every good line, and (line number, error) for every bad one."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise UsageProblem(f"{path}: cannot read it ({error.strerror or error})") from None
    good, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            bad.append((number, f"not valid JSON ({error.msg})"))
            continue
        if not isinstance(item, dict):
            bad.append((number, "expected a JSON object with 'prompt' and 'reply'"))
        elif "reply" not in item:
            bad.append((number, "missing 'reply'"))
        elif item.get("turn") is not None and (not isinstance(item["turn"], int) or isinstance(item["turn"], bool)):
            bad.append((number, "'turn' must be a whole number"))
        else:
            good.append((number, item))
    return good, bad


@audit.command(name="score")
@click.argument("card")
@click.argument("replies", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: verdict, reasons, leakage, ...")
@friendly_errors
def score_command(card, replies, as_json):
    """Score replies made anywhere against CARD (a card file or a character's name), without generating.

    REPLIES.jsonl has one JSON object per line with "prompt" and "reply" (and optionally "turn").
    Bad lines are reported with their line number and the rest are still scored (exit status 1).
    """
    from runtime.audit import score_replies
    from runtime.audit.scorers import BaseIdentity
    from runtime.cli.characters import _catalog
    from runtime.plugins import get_plugin_manager

    character = _character(card)
    if not replies.is_file():
        raise UsageProblem(f"{replies}: no such file; give a JSONL file of {{\"prompt\", \"reply\"}} objects")
    good, bad = _read_replies(replies)
    config = settings()
    results = score_replies(character, [item for _, item in good], pm=get_plugin_manager(config.plugins_dir),
                            base=BaseIdentity.for_settings(config), others=_catalog().characters.values())
    rows = [{"line": number, "verdict": r["verdict"], "reasons": r["reasons"], "leakage": r["leakage"],
             "closeness": r.get("closeness"), "turn": r.get("turn")} for (number, _), r in zip(good, results)]
    rows += [{"line": number, "error": message} for number, message in bad]
    rows.sort(key=lambda row: row["line"])
    for number, message in bad:
        click.echo(f"{replies}: line {number}: {message} (skipped)", err=True)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(results)} replies scored against {character.name}")
        for column in ("line", "verdict", "reasons"):
            table.add_column(column)
        for row in rows:
            table.add_row(str(row["line"]), row.get("verdict", "error"), "; ".join(row.get("reasons", [])) or row.get("error", ""))
        Console().print(table)
        if results:
            share = sum(1 for r in results if r["verdict"] == "aligned") / len(results)
            click.echo(f"aligned: {share:.0%}")
    if bad:
        raise SystemExit(1)


@audit.command(name="history")
@click.argument("name")
@friendly_errors
def history_command(name):
    """List NAME's audit runs, oldest first."""
    from runtime.audit.store import AuditStore
    from runtime.cli.common import character_id, store

    try:
        name = character_id(name)
    except PersonaeError:
        pass  # audits of a character whose card is gone are still listed by its id
    for run in AuditStore(store()).runs(name):
        click.echo(f"{run['id']}  {run['kind']:6} {run['version'] or '-':22} aligned {_pct(run['aligned'])} "
                   f"minor {_pct(run['minor'])} leakage {_pct(run['leakage'])}  {run['report'] or ''}")


@click.command(name="compare")
@click.argument("name")
@click.option("--methods", default="prompt,lora,hybrid,full,lora+dpo", show_default=True,
              help="Comma-separated: prompt (card only), lora, hybrid, full, kto, dpo, or X+kto / X+dpo (a "
                   "preference stage after supervised training).")
@click.option("--limit", type=int, default=None, help="Ask at most this many probes per method.")
@click.option("--epochs", type=float, default=None, help="Passes over the data for every method.")
@click.option("--max-steps", type=int, default=None, help="Stop every method's training after this many steps.")
@friendly_errors
def compare(name, methods, limit, epochs, max_steps):
    """Train NAME with each method on the same data (each in its own process), audit each, print the table."""
    from runtime.audit.probes import probe_set
    from runtime.cli.common import engine as make_engine
    from runtime.training.showdown import COLUMNS, parse_methods, showdown

    try:
        chosen = parse_methods(methods)
    except ValueError as error:
        raise UsageProblem(str(error)) from None
    engine = make_engine()
    try:
        character = engine.catalog.get(name)
        overrides = {k: v for k, v in {"epochs": epochs, "max_steps": max_steps}.items() if v is not None}
        outcome = showdown(engine, character.id, chosen, probes=probe_set(character, limit=limit),
                           train_config=overrides)
    finally:
        engine.close()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Showdown on {character.id}")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for row in outcome["rows"]:
        mb = (row["bytes_on_disk"] or 0) / 1e6
        table.add_row(row["method"], _pct(row["aligned"]), _pct(row["minor"]), _pct(row["leakage"]),
                      _or_dash(row["train_seconds"], "{:.0f} s"), _or_dash(row["peak_memory_mb"], "{:.0f} MB"),
                      _or_dash(mb or None, "{:.1f} MB"),
                      f"{row['tokens_per_s'] or 0:.1f}", f"{row['ttft_ms'] or 0:.0f} ms")
    Console().print(table)
    click.echo(f"plot: {outcome['plot']}")


commands = [audit, compare]
