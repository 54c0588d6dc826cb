"""Lorebooks as SillyTavern runs them: logic, regex keys, recursion, budget, decorators and prompt placement."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime.characters import lorebook, parse_card
from runtime.characters.lorebook import ScanSettings, scan
from runtime.characters.prompt import build_messages, count_tokens

FIXTURES = Path(__file__).parent / "fixtures" / "cards"


def book(*entries, **fields):
    return {"entries": list(entries), **fields}


def entry(keys, content, **fields):
    return {"keys": keys, "content": content, "enabled": True, "insertion_order": 100, **fields}


def fired(book_, *texts, **settings):
    return [e.content for e in scan(book_, list(texts), ScanSettings(**settings))]


@pytest.mark.parametrize("logic, text, fires", [
    (0, "the boat is red", True), (0, "the boat", False),  # AND ANY
    (3, "a red and blue boat", True), (3, "a red boat", False),  # AND ALL
    (2, "a green boat", True), (2, "a red boat", False),  # NOT ANY
    (1, "a red boat", True), (1, "a red and blue boat", False),  # NOT ALL
])
def test_selective_logic_matches_sillytavern(logic, text, fires):
    lore = book(entry(["boat"], "BOAT", selective=True, secondary_keys=["red", "blue"],
                      extensions={"selectiveLogic": logic}))
    assert (fired(lore, text) == ["BOAT"]) is fires
    # Not selective: secondary keys are ignored.
    plain = book(entry(["boat"], "BOAT", selective=False, secondary_keys=["red"], extensions={"selectiveLogic": 0}))
    assert fired(plain, "a boat") == ["BOAT"]


def test_case_whole_words_and_regex_keys():
    lore = book(
        entry(["Sea"], "CASE", case_sensitive=True),
        entry(["sea"], "WORD"),
        entry(["sea"], "SUBSTRING", extensions={"match_whole_words": False}),
        entry(["/ka?ra?ken/i"], "REGEX"),
        entry(["^tide$"], "V3 REGEX", use_regex=True),
    )
    assert fired(lore, "research") == ["SUBSTRING"]
    assert sorted(fired(lore, "the sea")) == ["SUBSTRING", "WORD"]
    assert sorted(fired(lore, "the Sea")) == ["CASE", "SUBSTRING", "WORD"]
    assert fired(lore, "a KRAKEN!") == ["REGEX"] and fired(lore, "tide") == ["V3 REGEX"]
    assert fired(lore, "low tide") == []


def test_a_pathological_regex_key_cannot_hang_the_scan(monkeypatch):
    monkeypatch.setattr(lorebook, "_BAD_PATTERNS", set())
    evil = "/(a|aa)+$/"  # exponential backtracking on a run of a's that does not end the text
    lore = book(entry([evil], "EVIL"), entry(["/" + "a" * 3000 + "/"], "HUGE"), entry(["/[/"], "BAD"),
                entry(["aaa"], "FINE", extensions={"match_whole_words": False}))
    assert sorted(fired(lore, "aaa")) == ["EVIL", "FINE"]  # on ordinary text the key works
    started = time.monotonic()
    assert fired(lore, "a" * 60 + "!") == ["FINE"]  # cut off by the time bound: no match, no hang
    assert time.monotonic() - started < 60  # generous (shared CPUs); unbounded this takes far longer
    # A key that ran out of time once is not run again (many such keys must not add up turn after turn).
    assert fired(lore, "aaa") == ["FINE"] and ("(a|aa)+$", 0) in lorebook._BAD_PATTERNS
    assert fired(lore, "a" * 3000 + "!") == ["FINE"]  # the over-long pattern is never run


def test_constant_disabled_probability_and_scan_depth():
    lore = book(entry([], "ALWAYS", constant=True), entry(["ghost"], "OFF", enabled=False),
                entry(["coin"], "NEVER", extensions={"probability": 0, "useProbability": True}),
                entry(["coin"], "HALF", extensions={"probability": 50}),
                entry(["old"], "DEEP", extensions={"scan_depth": 3}), scan_depth=1)
    assert fired(lore, "ghost") == ["ALWAYS"]
    halves = [("HALF" in fired(lore, "coin", seed=seed)) for seed in range(40)]
    assert 5 < sum(halves) < 35 and fired(lore, "coin", seed=1) == fired(lore, "coin", seed=1)
    assert "DEEP" in fired(lore, "old", "b", "c") and "DEEP" not in fired(lore, "old", "b", "c", "d")
    assert fired(book(entry(["old"], "X"), scan_depth=1), "old", "new") == []  # the book's own scan_depth


def test_recursive_scanning_with_a_step_limit():
    chain = book(entry(["a1"], "mentions a2"), entry(["a2"], "mentions a3"), entry(["a3"], "mentions a4"),
                 entry(["a4"], "end"), entry(["a2"], "NO", extensions={"exclude_recursion": True}),
                 entry(["a1"], "STOP mentions a4", extensions={"prevent_recursion": True}),
                 entry(["a2"], "LATE", extensions={"delay_until_recursion": True}))
    assert fired(chain, "a1") == ["mentions a2", "STOP mentions a4"]  # not recursive by default
    deep = fired(chain, "a1", recursive=True, max_recursion_steps=1)
    assert "mentions a3" in deep and "LATE" in deep and "NO" not in deep and "end" not in deep
    assert "end" in fired(chain, "a1", recursive=True, max_recursion_steps=3)
    assert "end" in fired(dict(chain, recursive_scanning=True), "a1")  # the book can turn it on
    loop = book(entry(["x"], "y"), entry(["y"], "x"), recursive_scanning=True)
    assert sorted(fired(loop, "x")) == ["x", "y"]  # each entry once, however the recursion loops


def test_token_budget_keeps_priority_then_insertion_order():
    lore = book(entry(["k"], "low " * 10, insertion_order=1), entry(["k"], "high " * 10, insertion_order=9),
                entry(["k"], "prio " * 10, priority=5, insertion_order=0),
                entry(["k"], "free " * 10, insertion_order=0, extensions={"ignore_budget": True}), token_budget=25)
    kept = [e.content.split()[0] for e in scan(lore, ["k"], count_tokens=lambda t: len(t.split()))]
    assert kept == ["prio", "high", "free"]


def test_v3_decorators_and_warnings_for_the_rest():
    card = parse_card(json.loads((FIXTURES / "nomad-v3.json").read_text()))
    entries = {e.keys[0] if e.keys else "": e for e in lorebook.entries(card.character_book)}
    condor = entries["condor"]
    assert (condor.position, condor.depth, condor.role) == (lorebook.AT_DEPTH, 0, "assistant")
    assert condor.content.startswith("The condor")  # decorators are not part of the text
    assert entries[""].force is True and entries["llama"].force is False  # @@@ fallback of an unknown one
    warnings = lorebook.unsupported(card.character_book)
    assert any("@@is_user_icon" in w for w in warnings) and any("@@instruct_depth" in w for w in warnings)
    assert not any("@@depth" in w or "@@role" in w or "@@dont_activate" in w for w in warnings)
    texts = lambda *t, turns=0: [e.content for e in scan(card.character_book, list(t),  # noqa: E731
                                                         ScanSettings(assistant_turns=turns))]
    assert texts("nothing") == ["Amaru never crosses after dark."]
    assert "Snow closes the pass from June." in texts("snow")
    assert "Snow closes the pass from June." not in texts("snow in summer")  # @@exclude_keys
    assert not any("Llamas" in t for t in texts("llama", turns=5))


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


def test_positions_depth_prompt_and_authors_note_in_the_prompt(tokenizer):
    card = parse_card(json.loads((FIXTURES / "sailor-st-v2.json").read_text()))
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hei."},
               {"role": "user", "content": "I came from Ålesund for herring."}]
    messages = build_messages(card, history, tokenizer, 2000, user="Ann", authors_note="[Mood: cheerful]")
    system = messages[0]["content"]
    # before_char lore sits between the instruction and the description; after_char lore comes last.
    assert system.index("Stay in character") < system.index("Herring is the silver") < system.index("Søren is a")
    assert "Njord is the old god" not in system  # its key is not in the chat
    # depth 0 as the user, after the last message; depth_prompt at depth 2; author's note at depth 4 (the top).
    # The card's example dialogues (turns) and the after-character lore come first; the chat follows.
    chat = [m for m in messages[1:] if not m.get("example") and not m["content"].startswith("What you know")]
    assert chat[-1] == {"role": "user", "content": "Ålesund burned in 1904 and was rebuilt in stone."}
    assert chat[-2]["content"] == "I came from Ålesund for herring."
    assert chat[2] == {"role": "system", "content": "Søren speaks in short sentences and swears by Njord."}
    assert chat[0] == {"role": "system", "content": "[Mood: cheerful]"} and chat[1]["content"] == "Hello"
    njord = build_messages(card, [{"role": "user", "content": "Njord and the storm"}], tokenizer, 2000)
    assert "Njord is the old god" in str(njord)  # NOT ALL: 'wind' is missing
    calm = build_messages(card, [{"role": "user", "content": "Njord, storm, wind"}], tokenizer, 2000)
    assert "Njord is the old god" not in str(calm)
    assert "Njord is the old god" not in str(build_messages(card, [{"role": "user", "content": "njord storm"}],
                                                           tokenizer, 2000))  # case_sensitive


def test_lore_gives_way_before_the_card_and_never_breaks_the_budget(tokenizer):
    card = parse_card(json.loads((FIXTURES / "sailor-st-v2.json").read_text()))
    history = [{"role": "user", "content": "herring from Ålesund " * 5}]
    for budget in (120, 180, 260, 400):
        messages = build_messages(card, history, tokenizer, budget)
        assert count_tokens(tokenizer, messages) <= budget
    roomy = str(build_messages(card, history, tokenizer, 400))
    assert "Herring is the silver" in roomy and "Ålesund burned" in roomy


STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('System messages are only allowed first') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_templates_that_allow_one_system_message_get_the_in_chat_lore_folded_in(smollm2_folder):
    from transformers import AutoTokenizer

    strict = AutoTokenizer.from_pretrained(smollm2_folder)
    strict.chat_template = STRICT_TEMPLATE
    card = parse_card(json.loads((FIXTURES / "sailor-st-v2.json").read_text()))
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hei."},
               {"role": "user", "content": "Herring from Ålesund?"}]
    messages = build_messages(card, history, strict, 2000, authors_note="[Mood: cheerful]")
    assert [m["role"] for m in messages if not m.get("example")] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    for text in ("swears by Njord", "[Mood: cheerful]", "Ålesund burned in 1904", "Herring is the silver"):
        assert text in system


def test_sillytavern_features_not_run_are_named_in_warnings():
    lore = book(entry(["a"], "x", name="triggered", extensions={"group": "weather", "sticky": 2,
                                                                "triggers": ["continue"]}),
                entry(["b"], "y", name="plain", extensions={"group": "", "sticky": 0, "position": 7}))
    warnings = lorebook.unsupported(lore)
    assert warnings == [  # inclusion groups, sticky and triggers run now (tests/test_lore_rules.py); continue does not
        "lore entry 'triggered': SillyTavern generation trigger(s) continue (triggers; Personae generates only "
        "normal, swipe, regenerate) is not supported and is ignored",
        "lore entry 'plain': position 'outlet' without an outlet name; the entry is never inserted"]
