"""Discord plugin parts without a bot: config, token checks, rate limits, who answers, redaction, --check."""

from __future__ import annotations

import logging
import random

from click.testing import CliRunner

from plugins.discord.bot import addresses, choose, name_patterns
from plugins.discord.config import check, parse_config, token_problems
from plugins.discord.ratelimit import RateLimiter
from plugins.discord.redact import MASK, TokenRedactor, install, uninstall
from tests.discord_harness import TOKEN


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_config_parses_ids_and_reports_every_problem():
    config, problems = parse_config({
        "allowed_guilds": [123456789012345678], "admin_roles": ["223456789012345678"],
        "admin_users": ["12", True], "answer": "everyone", "user_rate": -1, "streaming": "yes",
        "admin_channel": 323456789012345678, "colour": "blue",
    })
    assert config.allowed_guilds == [123456789012345678] and config.admin_roles == [223456789012345678]
    assert config.admin_channel == 323456789012345678
    assert config.answer == "first" and config.user_rate == 6 and config.streaming is True  # defaults kept
    joined = "\n".join(problems)
    assert "admin_users: '12' is not a Discord id" in joined and "admin_users: True" in joined
    assert "answer: 'everyone' is not one of first, all, random, none" in joined
    assert "user_rate: expected a non-negative int" in joined
    assert "streaming: expected true or false" in joined
    assert "unknown key 'colour'" in joined
    assert len(problems) == 6


def test_default_config_has_no_problems_and_sampling_overrides():
    config, problems = parse_config({"temperature": 0, "max_new_tokens": 24})
    assert problems == []
    assert config.sampling == {"temperature": 0.0, "max_new_tokens": 24}


def test_token_shape_is_checked_without_connecting():
    assert token_problems(TOKEN) == []
    assert "is empty" in token_problems("")[0]
    assert "three parts" in token_problems("abc")[0]
    assert "without the 'Bot ' prefix" in token_problems("Bot " + TOKEN)[0]
    assert "base64 user id" in token_problems("aGVsbG8.abc.def")[0]
    assert check({"answer": "all"}, TOKEN) == []


def test_rate_limiter_window_and_single_warning():
    clock = Clock()
    limiter = RateLimiter(2, 60, clock=clock)
    assert limiter.hit("u") == 0 and limiter.hit("u") == 0
    wait = limiter.hit("u")
    assert wait == 60
    assert limiter.should_warn("u", wait) is True
    clock.now += 10
    assert limiter.hit("u") == 50 and limiter.should_warn("u", 50) is False  # warned once per window
    assert limiter.hit("other") == 0  # keys are independent
    clock.now += 51
    assert limiter.hit("u") == 0 and limiter.should_warn("u", 1) is True
    assert RateLimiter(0).hit("x") == 0  # 0 = no limit


def limiter_memory(limiter, clock, users: int, step: float) -> int:
    """Bytes the limiter holds after `users` distinct users sent one message each, `step` seconds apart."""
    import tracemalloc

    tracemalloc.start()
    try:
        for i in range(users):
            clock.now += step
            if limiter.hit(f"user:{i}"):
                limiter.should_warn(f"user:{i}", 1)
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_rate_limiter_forgets_idle_users_so_memory_stays_bounded():
    users, step = 100_000, 0.01  # 100,000 distinct users over 1,000 s, 600 of them a minute
    clock = Clock()
    kept = RateLimiter(6, 60, clock=clock)
    held = limiter_memory(kept, clock, users, step)
    # Only users heard from in the last two periods remain (a sweep runs at most once a period).
    assert len(kept) <= 2 * 60 / step + 1
    # The same traffic with a window that never expires keeps every user: what forgetting saves.
    forever_clock = Clock()
    forever = RateLimiter(6, 1e9, clock=forever_clock)
    everyone = limiter_memory(forever, forever_clock, users, step)
    assert len(forever) == users and held < everyone / 5, (held, everyone)
    # Forgetting changes nothing for users still inside their window.
    for _ in range(6):
        assert kept.hit("busy") == 0
    assert kept.hit("busy") == 60 and kept.should_warn("busy", 60) is True
    clock.now += 61  # a sweep passes: "busy" is forgotten, and may speak again
    assert kept.hit("someone") == 0 and "busy" not in kept._events and kept.hit("busy") == 0


class Card:
    def __init__(self, id, name):
        self.id, self.name = id, name


MARA, QUILL, PIXEL = Card("captain-mara-voss", "Captain Mara Voss"), Card("professor-quill", "Professor Quill"), \
    Card("pixel", "Pixel")


def test_characters_are_addressed_by_distinctive_name_words():
    assert "captain" not in name_patterns(MARA) and {"mara", "voss", "captain mara voss"} <= set(name_patterns(MARA))
    assert addresses("Mara, where are we headed?", MARA)
    assert addresses("what do you think, professor quill", QUILL)
    assert not addresses("the captain of the team", MARA)  # a title alone is not her name
    assert not addresses("pixelated screens", PIXEL)  # whole words only


def test_who_answers_per_mode():
    bound, rng = [PIXEL, QUILL, MARA], random.Random(1)
    assert choose("Quill and Pixel, hello", bound, "none", rng) == [PIXEL, QUILL]
    assert choose("hello", bound, "first", rng) == [PIXEL]
    assert choose("hello", bound, "all", rng) == bound
    assert choose("hello", bound, "none", rng) == []
    assert choose("hello", bound, "none", rng, mentioned=True) == [PIXEL]
    picks = {choose("hello", bound, "random", rng)[0].id for _ in range(40)}
    assert picks == {c.id for c in bound}
    assert choose("hello", [], "all", rng) == []


def test_token_is_redacted_from_log_records(caplog):
    redactor = TokenRedactor(TOKEN)
    logger = logging.getLogger("plugins.discord.test")
    logger.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger="plugins.discord.test"):
            logger.info("connecting with %s", TOKEN)
            logger.info(f"headers {{'Authorization': 'Bot {TOKEN}'}}")
            logger.info("as mapping %(token)s", {"token": TOKEN})
            try:
                raise RuntimeError(f"bad token {TOKEN}")
            except RuntimeError:
                logger.exception("failed")
    finally:
        logger.removeFilter(redactor)
    assert TOKEN not in caplog.text
    assert caplog.text.count(MASK) == 4


def test_installed_redactor_covers_root_handlers_and_discord_loggers(caplog):
    redactor = install(TOKEN)
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("discord.http").debug("GET /users/@me with Bot %s", TOKEN)
    finally:
        uninstall(redactor)
    assert TOKEN not in caplog.text and MASK in caplog.text


def test_serve_check_validates_discord_config_without_connecting(monkeypatch, tmp_path):
    from runtime.cli import cli

    runner = CliRunner()
    (tmp_path / "personae.toml").write_text('[discord]\nanswer = "all"\nadmin_users = ["123456789012345678"]\n')
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    result = runner.invoke(cli, ["serve", "--check"])
    assert result.exit_code == 0, result.output
    assert "discord: ok" in result.output and TOKEN not in result.output

    (tmp_path / "personae.toml").write_text('[discord]\nanswer = "loudest"\n')
    monkeypatch.setenv("DISCORD_TOKEN", "not-a-token")
    result = runner.invoke(cli, ["serve", "--check"])
    assert result.exit_code == 2
    assert "discord: problems" in result.output
    assert "answer: 'loudest' is not one of" in result.output
    assert "does not look like a bot token" in result.output

    monkeypatch.delenv("DISCORD_TOKEN")
    result = runner.invoke(cli, ["serve", "--check"])
    assert "discord" not in result.output  # no token: the platform isn't wanted


def test_platform_is_wanted_only_with_a_token_and_stop_is_safe(monkeypatch):
    import plugins.discord as plugin
    from runtime.config import load_settings

    settings = load_settings()
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert plugin.platform.wanted(settings, {}) is False
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    assert plugin.platform.wanted(settings, {}) is True
    plugin.platform.stop()  # not running: nothing to do, no error
    registered = []
    plugin.register_platforms(registered.append)
    assert registered == [plugin.platform] and registered[0].name == "discord"


def test_admin_job_results_are_summarised_for_discord():
    from plugins.discord.commands import summary

    class Outcome:
        def summary(self):
            return "pixel: promoted pixel@4 — alignment up 3 points"

    class Report:
        def summary(self):
            return {"run_id": "r1", "aligned": 0.8734, "leakage": 0.05, "replies": 30}

    assert summary(Outcome()) == "pixel: promoted pixel@4 — alignment up 3 points"
    assert summary(Report()) == "run_id r1, aligned 87%, leakage 5%, replies 30"
    assert summary({"character": "pixel", "cron": "0 4 * * 1"}) == "character pixel, cron 0 4 * * 1"
    assert summary(None) == "done."
