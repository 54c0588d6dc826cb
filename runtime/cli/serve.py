"""`personae serve`: run the platforms (Discord, HTTP, ...) and the scheduler in one process."""

from __future__ import annotations

import signal
import threading

import click

from runtime.cli.common import friendly_errors


def registered_platforms(pm) -> list:
    """Every platform that plugins registered."""
    platforms = []
    pm.hook.register_platforms(register=platforms.append)
    return platforms


@click.command()
@click.option("--http", "http", metavar="HOST:PORT", default=None, is_flag=False, flag_value="127.0.0.1:8000",
              help="Serve the OpenAI-compatible API and web chat (default 127.0.0.1:8000).")
@click.option("--no-scheduler", is_flag=True, help="Don't run scheduled retraining and audits here.")
@click.option("--check", is_flag=True, help="Validate the configuration of each platform without connecting.")
@click.option("--startup-report", type=float, default=60, show_default=True, envvar="PERSONAE_STARTUP_REPORT_SECONDS",
              metavar="SECONDS", help="While a platform is not listening after this long, print every thread's "
              "stack and the machine's memory pressure to stderr, again each time as long (0: never).")
@friendly_errors
def serve(http, no_scheduler, check, startup_report):
    """Serve characters on every configured platform (Discord when DISCORD_TOKEN is set)."""
    from runtime.chat.build import build_engine
    from runtime.cli.startup_watch import StartupWatch
    from runtime.config import load_settings
    from runtime.plugins import get_plugin_manager

    settings = load_settings()
    pm = get_plugin_manager(settings.plugins_dir)
    options = {"http": http}
    wanted = [p for p in registered_platforms(pm) if p.wanted(settings, options)]
    problems = [f"{p.name}: {problem}" for p in wanted for problem in p.check(settings, options)]
    if check:
        for platform in wanted:
            click.echo(f"{platform.name}: {'problems' if any(x.startswith(platform.name) for x in problems) else 'ok'}")
        for problem in problems:
            click.echo(f"  - {problem}", err=True)
        if not wanted:
            click.echo("no platform is configured: set DISCORD_TOKEN, or pass --http")
        raise SystemExit(2 if problems else 0)
    if problems:
        raise click.ClickException("; ".join(problems))
    if not wanted:
        raise click.ClickException("no platform is configured: set DISCORD_TOKEN for Discord, or pass --http HOST:PORT")
    started: list = []  # the platforms' threads, once they run

    def not_listening() -> list[str]:
        # A platform with a `started` event says when it listens; one without is taken at its thread's word.
        if not started:
            return [p.name for p in wanted]
        return [p.name for p in wanted if getattr(p, "started", None) is not None and not p.started.is_set()]

    watch = StartupWatch(startup_report, not_listening).start()  # from here: a slow model load is covered too
    engine = build_engine(settings, pm=pm)
    scheduler = None
    if not no_scheduler:
        from runtime.jobs import start_scheduler

        scheduler = start_scheduler(engine)
    threads = [threading.Thread(target=p.run, args=(engine, settings, options), name=p.name, daemon=True)
               for p in wanted]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for thread in threads:
        thread.start()
    started.extend(threads)
    click.echo(f"serving on: {', '.join(p.name for p in wanted)} (Ctrl-C to stop)")
    try:
        while not stop.is_set() and any(t.is_alive() for t in threads):
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    watch.stop()
    for platform in wanted:
        platform.stop()
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    engine.close()


commands = [serve]
