"""Curation rules, each proven on a real SQLite log: PII, opt-outs, forgets, 👎, leakage, dedupe, cap, card mix."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from training_helpers import log_many, log_turn

from runtime.cli import cli
from runtime.config import load_settings
from runtime.hookspecs import hookimpl
from runtime.store import Store
from runtime.training import curate
from runtime.training.config import TrainingConfig
from runtime.training.scrub import scrub


@pytest.fixture
def world():
    """Settings, a real store in the test's data dir, and the built-in Pixel character."""
    from runtime.characters.catalog import Catalog
    from runtime.plugins import get_plugin_manager

    settings = load_settings()
    pm = get_plugin_manager(settings.plugins_dir, reload=True)
    store = Store(settings.db_path)
    return settings, store, Catalog(pm, settings.data_dir).get("pixel"), pm


def all_text(dataset) -> str:
    return json.dumps([e["messages"] for e in dataset.train + dataset.validation], ensure_ascii=False)


PII = {
    "email": "ann.lee+work@example.org",
    "phone": "+44 20 7946 0958",
    "us_phone": "(555) 123-4567",
    "mention": "<@123456789012345678>",
    "nick_mention": "<@!223456789012345678>",
    "role": "<@&323456789012345678>",
    "channel": "<#423456789012345678>",
    "snowflake": "523456789012345678",
    "token_url": "https://api.example.com/v1/items?token=sk_live_abcdef123456",
    "webhook": "https://discord.com/api/webhooks/1234/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
}


def test_scrub_replaces_each_kind_and_leaves_ordinary_numbers():
    text, counts = scrub(" ".join(PII.values()) + " in 1986 I scored 999,999 on 2024-01-02")
    for value in PII.values():
        assert value not in text
    assert "[EMAIL]" in text and "[PHONE]" in text and "@user" in text and "[URL]" in text and "[ID]" in text
    assert "1986" in text and "999,999" in text and "2024-01-02" in text
    assert counts["email"] == 1 and counts["phone"] == 2 and counts["secret_url"] == 2


def test_planted_pii_never_reaches_the_exported_jsonl(world, tmp_path):
    settings, store, pixel, pm = world
    log_many(store, 6)
    planted = " ".join(PII.values())
    log_turn(store, "u2", f"my details: {planted}", f"Saved {PII['email']} and {PII['mention']}! BEEP!")
    log_turn(store, "u2", "and again", f"Calling {PII['phone']} now, visit {PII['token_url']}")
    dataset = curate(store, pixel, settings, pm=pm)
    out = tmp_path / "pixel.jsonl"
    dataset.export(out, "all")
    exported = out.read_text()
    for value in PII.values():
        assert value not in exported
    assert "[EMAIL]" in exported and "@user" in exported
    lines = [json.loads(line) for line in exported.splitlines()]
    assert all(set(line) == {"messages"} for line in lines)
    assert all(m["role"] in {"system", "user", "assistant"} for line in lines for m in line["messages"])
    assert dataset.scrubbed["email"] >= 2


def test_opted_out_and_forgotten_users_never_appear(world):
    settings, store, pixel, pm = world
    log_many(store, 5, user_id="keep")
    # Same channel: their lines would otherwise be context of other users' turns.
    log_turn(store, "shy", "SECRET-OPTOUT my diary entry", "BEEP, your diary is safe!", channel="c1")
    log_turn(store, "gone", "SECRET-FORGOTTEN my address", "BOOP, noted!", channel="c1")
    log_many(store, 3, user_id="keep", start=5)
    store.set_opt_out("shy", True)
    store.forget_user("gone")
    dataset = curate(store, pixel, settings, pm=pm)
    text = all_text(dataset)
    assert "SECRET-OPTOUT" not in text and "diary" not in text
    assert "SECRET-FORGOTTEN" not in text
    assert dataset.dropped["opted_out"] >= 1
    assert dataset.kept_turns == 8


def test_thumbs_down_and_leaky_replies_are_dropped_liked_kept(world):
    settings, store, pixel, pm = world
    replies = log_many(store, 6)
    store.add_feedback(replies[0]["id"], "u1", -1, "test")
    store.add_feedback(replies[1]["id"], "u1", +1, "test")
    store.update_message(replies[2]["id"], meta=json.dumps({"leakage": True}))
    dataset = curate(store, pixel, settings, pm=pm)
    text = all_text(dataset)
    assert replies[0]["text"] not in text and replies[2]["text"] not in text
    assert replies[1]["text"] in text
    assert dataset.dropped["thumbs_down"] == 1 and dataset.dropped["leakage"] == 1


def test_audit_verdicts_table_flags_leakage(world):
    settings, store, pixel, pm = world
    replies = log_many(store, 5)
    store.db["audit_verdicts"].insert_all([{"message_id": replies[3]["id"], "leakage": 1},
                                           {"message_id": replies[4]["id"], "leakage": 0}])
    dataset = curate(store, pixel, settings, pm=pm)
    assert dataset.dropped["leakage"] == 1
    assert replies[3]["text"] not in all_text(dataset) and replies[4]["text"] in all_text(dataset)


def test_near_duplicates_and_swipes_are_removed(world):
    settings, store, pixel, pm = world
    log_many(store, 4)
    line = "BEEP BOOP! Welcome to the Starlight Arcade, player one, insert a coin to continue the adventure!"
    for variant in (line, line.upper(), line.replace("!", "."), line.replace("adventure", "quest")):
        log_turn(store, "u3", "Hi Pixel", variant)
    asked, first = log_turn(store, "u3", "Tell me a joke", "A first joke that got re-rolled")
    conversation = first["conversation_id"]
    store.log_message(conversation_id=conversation, role="assistant", text="The better joke, BLIP!",
                      character="pixel", reply_to=asked["id"], swipe_of=first["id"])
    dataset = curate(store, pixel, settings, pm=pm)
    assert dataset.dropped["duplicate"] == 3
    assert dataset.dropped["swiped_away"] == 1
    text = all_text(dataset)
    assert "got re-rolled" not in text and "The better joke" in text


def test_one_user_cannot_dominate(world):
    settings, store, pixel, pm = world
    log_many(store, 60, user_id="loud", channel="c1")
    for user in ("a", "b", "c"):
        log_many(store, 3, user_id=user, channel=f"ch-{user}")
    config = TrainingConfig(max_user_share=0.25, user_cap_floor=5)
    dataset = curate(store, pixel, settings, config=config, pm=pm)
    loud = [e for e in dataset.train + dataset.validation if e["meta"].get("user_id") == "loud"]
    unique = 69 - dataset.dropped["duplicate"]
    cap = max(5, -(-unique // 4))  # ceil(0.25 * unique)
    assert len(loud) == cap < unique / 3
    assert dataset.dropped["duplicate"] == 0 and dataset.dropped["user_cap"] == 60 - cap
    assert len([e for e in dataset.train + dataset.validation if e["meta"].get("user_id") == "a"]) == 3
    assert max(e["meta"]["message_id"] for e in loud) == max(r["id"] for r in store.query(
        "select id from messages where role = 'assistant' and channel = 'c1'"))  # newest kept


def test_card_examples_are_mixed_in_and_split_is_deterministic(world):
    settings, store, pixel, pm = world
    log_many(store, 30, user_id="u1")
    first = curate(store, pixel, settings, pm=pm)
    second = curate(store, pixel, settings, pm=pm)
    card_lines = [m["content"] for block in pixel.example_dialogues("User") for m in block if m["role"] == "assistant"]
    train_text = json.dumps([e["messages"] for e in first.train], ensure_ascii=False)
    assert card_lines and all(line in train_text for line in card_lines)
    assert first.card_examples >= len(pixel.example_dialogues("User"))
    assert first.data_hash == second.data_hash
    assert first.validation and {e["meta"]["message_id"] for e in first.validation}.isdisjoint(
        {e["meta"].get("message_id") for e in first.train})
    assert all(e["messages"][0]["role"] == "system" and e["messages"][-1]["role"] == "assistant"
               for e in first.train + first.validation)


def test_curate_examples_hook_and_cli_dataset_export(world, tmp_path):
    settings, store, pixel, pm = world
    log_many(store, 8)
    replies = log_many(store, 2, user_id="u9", channel="c9", start=8)
    store.add_feedback(replies[0]["id"], "u9", -1)

    class Plugin:
        @hookimpl
        def curate_examples(self, character, examples):
            examples.append({"messages": [{"role": "user", "content": "hook"},
                                          {"role": "assistant", "content": "HOOK-ADDED"}],
                             "meta": {"source": "plugin"}})

    plugin = Plugin()
    pm.register(plugin)
    try:
        dataset = curate(store, pixel, settings, pm=pm)
    finally:
        pm.unregister(plugin)
    assert "HOOK-ADDED" in all_text(dataset)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["dataset", "pixel", "--export", str(out), "--split", "all"])
    assert result.exit_code == 0, result.output
    assert "thumbs_down  1" in result.output and "duplicate" in result.output and "opted_out" in result.output
    assert len(out.read_text().splitlines()) >= 9
    unknown = CliRunner().invoke(cli, ["dataset", "nobody"])
    assert unknown.exit_code == 2 and "unknown character" in unknown.output


def test_labels_cover_only_the_characters_reply(tiny_base):
    from runtime.training.dataset import IGNORE, tokenize_example

    tokenizer = tiny_base.tokenizer
    example = {"messages": [{"role": "system", "content": "You are Pixel."},
                            {"role": "user", "content": "old question"}, {"role": "assistant", "content": "OLD REPLY"},
                            {"role": "user", "content": "new question"}, {"role": "assistant", "content": "NEW REPLY"}],
               "meta": {"train_on": "last"}}
    row = tokenize_example(tokenizer, example, 512)
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE])
    assert "NEW REPLY" in trained and "OLD REPLY" not in trained and "question" not in trained
    row_all = tokenize_example(tokenizer, {**example, "meta": {"train_on": "all"}}, 512)
    trained_all = tokenizer.decode([t for t, label in zip(row_all["input_ids"], row_all["labels"]) if label != IGNORE])
    assert "OLD REPLY" in trained_all and "NEW REPLY" in trained_all and "question" not in trained_all
