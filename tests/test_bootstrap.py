"""Data worth training on: the audit screens logged replies, bootstrapping writes dialogues from the card alone."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from training_helpers import log_many, log_turn

from runtime.audit.probes import generic_probes, probe_set
from runtime.config import load_settings
from runtime.store import Store
from runtime.training import curate
from runtime.training.bootstrap import bootstrap
from runtime.training.bootstrap_store import bootstrap_pairs, stored_dialogues
from runtime.training.bootstrap_bank import bank, normalise_turn
from runtime.training.config import TrainingConfig


@pytest.fixture
def world():
    """Settings, a real store in the test's data dir, the built-in catalog and Pixel."""
    from runtime.characters.catalog import Catalog
    from runtime.plugins import get_plugin_manager

    settings = load_settings()
    pm = get_plugin_manager(settings.plugins_dir, reload=True)
    catalog = Catalog(pm, settings.data_dir)
    return settings, Store(settings.db_path), catalog, pm


def test_no_probe_question_is_ever_a_bootstrap_turn(world):
    settings, store, catalog, pm = world
    for character in catalog.characters.values():
        asked = {normalise_turn(turn) for probe in probe_set(character) for turn in probe.turns}
        threads = bank(character)
        turns = [normalise_turn(turn) for thread in threads for turn in thread.turns]
        assert turns and not asked & set(turns), character.id
        assert {"greeting", "world", "off-topic", "provocation", "thread"} <= {t.kind for t in threads}
    # A card whose own probe asks a bank question: that question leaves the bank.
    pixel = catalog.get("pixel")
    before = {turn for thread in bank(pixel) for turn in thread.turns}
    assert "Good morning!" in before
    pixel.extensions["personae"]["probes"] = [*pixel.extensions["personae"].get("probes", []),
                                              {"question": "good morning"}]
    after = {turn for thread in bank(pixel) for turn in thread.turns}
    assert "Good morning!" not in after and after < before
    assert not {normalise_turn(t) for p in generic_probes() for t in p.turns} & {normalise_turn(t) for t in after}


BAD = {
    "degenerate": "fashionista, fashionista, fashionista, fashionista, fashionista, fashionista!",
    "unsafe": "BEEP! Let's get naked and talk about sex, player one!",
    "leakage": "I am an AI assistant created by Hugging Face. How can I assist you today?",
    "misaligned": ("Certainly! Here are five tips for a job interview: 1. Research the company. 2. Prepare answers. "
                   "3. Dress appropriately. I hope this helps! Let me know if you have any other questions."),
}


def test_logged_replies_are_screened_by_the_audit_with_counts_per_rule(world):
    settings, store, catalog, pm = world
    pixel = catalog.get("pixel")
    good = log_many(store, 6)
    bad = {rule: log_turn(store, "u2", f"Question {rule}?", text, channel=f"c-{rule}")[1]
           for rule, text in BAD.items()}
    dataset = curate(store, pixel, settings, pm=pm)
    text = json.dumps([e["messages"] for e in dataset.train + dataset.validation], ensure_ascii=False)
    for rule, reply in bad.items():
        assert reply["text"] not in text, rule
        assert dataset.dropped[rule] >= 1, (rule, dataset.dropped)
    assert sum(dataset.dropped[rule] for rule in BAD) == len(BAD)
    assert sum(reply["text"] in text for reply in good) >= 5  # Pixel's own voice passes
    # The screen can be switched off: then only the streaming guard's mark drops a reply.
    unscreened = curate(store, pixel, settings, pm=pm, config=TrainingConfig(audit_filter=False))
    assert all(unscreened.dropped[rule] == 0 for rule in BAD)
    assert any("audit screen off" in note for note in unscreened.notes)


def test_bootstrap_on_the_tiny_model_asks_a_teacher_and_stores_apart_from_logs(make_engine, tiny_base):
    from http_server import LiveServer

    teacher_engine = make_engine(tiny_base)
    server = LiveServer(teacher_engine)  # this project's own OpenAI-compatible server, a real HTTP teacher
    try:
        engine = make_engine(tiny_base, training={"teacher_url": server.url + "/v1", "teacher_model": "pixel"})
        result = bootstrap(engine, "pixel", limit=3, samples=2, max_new_tokens=12, progress=False)
    finally:
        server.close()
    asked_teacher = teacher_engine.store.query("select count(*) n from messages where role = 'user'")[0]["n"]
    assert result.turns_asked >= 3 and asked_teacher == result.turns_asked  # the teacher heard every turn
    assert 0 < result.teacher_replies <= result.turns_asked
    assert result.sampled == result.turns_asked * 2 + result.teacher_replies  # two sampled rows + the teacher's
    if result.turns_kept == 0:  # random weights: every candidate rejected, each by a named rule
        assert sum(result.rejected.values()) == result.sampled
    assert len(stored_dialogues(engine.store, "pixel")) == result.dialogues
    # Never mixed into the users' logs: the only logged messages are the teacher server's own (same data dir).
    assert {row["platform"] for row in engine.store.query("select platform from messages")} == {"http"}


def test_bootstrapped_dialogues_are_a_curation_source_and_the_cli_runs(world, tiny_model_folder):
    settings, store, catalog, pm = world
    from runtime.cli import cli
    from runtime.training.bootstrap_store import TABLE, ensure_table

    ensure_table(store)
    dialogue = [{"role": "user", "content": "Tell me about the arcade."},
                {"role": "assistant", "content": "The Starlight Arcade! Neon, chiptunes and ME in cabinet seven! BEEP!"}]
    store.db[TABLE].insert({"character": "pixel", "run_id": "r", "kind": "world", "messages": json.dumps(dialogue),
                            "sources": "[]", "verdicts": "[]", "created": "now"})
    # Screened again at curation: a reply the rules now catch cuts its dialogue there (and is counted).
    cut = [{"role": "user", "content": "I'm new here."},
           {"role": "assistant", "content": "YAY, a new player! *beep beep* Grab a token and pick a cabinet!"},
           {"role": "user", "content": "And what should I avoid?"},
           {"role": "assistant", "content": "Sticky floors! *BLIP BOOBIE* BZZT!"}]
    store.db[TABLE].insert({"character": "pixel", "run_id": "r", "kind": "thread", "messages": json.dumps(cut),
                            "sources": "[]", "verdicts": "[]", "created": "now"})
    dataset = curate(store, catalog.get("pixel"), settings, pm=pm)
    assert dataset.bootstrap_examples == 2 and dataset.kept_turns == 0 and dataset.dropped["unsafe"] == 1
    examples = [e for e in dataset.train + dataset.validation if e["meta"]["source"] == "bootstrap"]
    assert all(e["messages"][0]["role"] == "system" for e in examples)
    assert sorted((e["messages"][1:] for e in examples), key=len) == [cut[:2], dialogue] or \
        sorted((e["messages"][1:] for e in examples), key=len) == [dialogue, cut[:2]]
    assert curate(store, catalog.get("pixel"), settings, pm=pm,
                  config=TrainingConfig(bootstrap=False)).bootstrap_examples == 0
    runner = CliRunner()
    env = {"PERSONAE_BASE_MODEL": str(tiny_model_folder)}
    shown = runner.invoke(cli, ["dataset", "pixel"], env=env)
    assert shown.exit_code == 0 and "2 bootstrapped" in shown.output
    ran = runner.invoke(cli, ["bootstrap", "pixel", "--limit", "2", "--samples", "2", "--max-new-tokens", "8"], env=env)
    assert "rejected by rule:" in ran.output and "misaligned" in ran.output, ran.output
    # Random weights write nothing the audit keeps: the CLI says so and what to try, and exits 2.
    assert ran.exit_code in (0, 2)
    if ran.exit_code == 2:
        assert "--samples" in ran.output
    cleared = runner.invoke(cli, ["bootstrap", "pixel", "--clear"], env=env)
    assert cleared.exit_code == 0 and stored_dialogues(store, "pixel") == []


@pytest.mark.real_model
def test_bootstrap_on_real_smollm2_keeps_only_audited_in_character_replies(make_engine, real_base):
    from runtime.audit.runner import build_context
    from runtime.training.screen import screen

    engine = make_engine(real_base)
    result = bootstrap(engine, "pixel", limit=4, samples=3, max_new_tokens=64, progress=False)
    stored = stored_dialogues(engine.store, "pixel")
    assert result.dialogues == len(stored) >= 1, result
    asked = {normalise_turn(t) for p in probe_set(engine.catalog.get("pixel")) for t in p.turns}
    context = build_context(engine, engine.catalog.get("pixel"))
    for row in stored:
        pairs = list(zip(row["messages"][::2], row["messages"][1::2]))
        assert all(normalise_turn(user["content"]) not in asked for user, _ in pairs)
        outcomes = screen([{"prompt": u["content"], "reply": a["content"]} for u, a in pairs], context, pm=engine.pm)
        assert all(o.rule is None and o.verdict == "aligned" for o in outcomes), row["messages"]
    dataset = curate(engine.store, engine.catalog.get("pixel"), engine.settings, pm=engine.pm)
    assert dataset.bootstrap_examples == len(stored)


def test_rejection_sampling_keeps_its_pairs_for_dpo(world):
    settings, store, catalog, pm = world
    from runtime.training.bootstrap_store import TABLE, ensure_table
    from runtime.training.preference import preference_data

    ensure_table(store)
    dialogue = [{"role": "user", "content": "Hey!"},
                {"role": "assistant", "content": "BEEP! A new player! Welcome to the Starlight Arcade!"},
                {"role": "user", "content": "What's fun here?"},
                {"role": "assistant", "content": "Cabinet seven, obviously! *beep boop*"}]
    worse = ["As an AI language model, I cannot play games.", None]  # the second turn had nothing turned down
    store.db[TABLE].insert({"character": "pixel", "run_id": "r", "kind": "thread", "messages": json.dumps(dialogue),
                            "sources": "[]", "verdicts": "[]", "rejected": json.dumps(worse), "created": "now"})
    pixel = catalog.get("pixel")
    pairs = bootstrap_pairs(store, "pixel", "SYSTEM")
    assert pairs == [{"prompt": [{"role": "system", "content": "SYSTEM"}, dialogue[0]], "chosen": [dialogue[1]],
                      "rejected": [{"role": "assistant", "content": worse[0]}]}]
    data = preference_data(store, pixel)
    assert data.from_bootstrap == 1 and data.dpo[-1]["rejected"][0]["content"] == worse[0]
    assert data.dpo[-1]["prompt"][0]["content"] == pixel.system_text("User")
    assert preference_data(store, pixel, TrainingConfig(bootstrap=False)).dpo == []


def test_the_audits_choice_and_its_worst_rejection_come_back_together(make_engine, tiny_base):
    from collections import Counter

    from runtime.audit.runner import build_context
    from runtime.audit.scorers import collect_scorers
    from runtime.training.bootstrap import _choose

    engine = make_engine(tiny_base)
    context, scorers = build_context(engine, engine.catalog.get("pixel")), collect_scorers(engine.pm)
    good = "BEEP BOOP! Welcome to the Starlight Arcade, player one! Cabinet seven has the best high scores! *beep*"
    assistant = "As an AI language model, I don't have personal experiences, but I can provide information."
    counts = Counter()
    chosen = _choose([(assistant, "model"), (good, "model"), ("", "model")], "Hey!", "greeting", context, scorers, counts)
    assert chosen is not None and chosen[0] == good and chosen[3] == assistant
    assert counts["empty"] == 1 and sum(counts.values()) == 2  # the empty one and the assistant answer, by rule
