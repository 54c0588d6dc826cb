"""SillyTavern's inclusion groups, timed effects (sticky, cooldown, delay), outlets and the @@…_after_match decorators."""

from __future__ import annotations

from collections import Counter

from runtime.characters import parse_card
from runtime.characters.lorebook import ScanSettings, scan
from runtime.characters.prompt import build_messages


def book(*entries):
    return {"entries": list(entries)}


def entry(keys, content, order=100, **extensions):
    return {"keys": keys, "content": content, "enabled": True, "insertion_order": order, "extensions": extensions}


def fired(lore, texts, **settings):
    return [e.content for e in scan(lore, list(texts), ScanSettings(**settings))]


def test_one_entry_per_inclusion_group_drawn_by_weight():
    lore = book(entry(["rain"], "DRIZZLE", group="weather", group_weight=300),
                entry(["rain"], "STORM", group="weather", group_weight=100),
                entry(["rain"], "UMBRELLA"))
    draws = Counter()
    for seed in range(200):
        out = fired(lore, ["rain again"], seed=seed)
        assert "UMBRELLA" in out and len([c for c in out if c in ("DRIZZLE", "STORM")]) == 1
        draws.update(c for c in out if c != "UMBRELLA")
    assert draws["DRIZZLE"] > 2 * draws["STORM"] > 0  # 3:1 by weight
    assert fired(lore, ["rain"], seed=5) == fired(lore, ["rain"], seed=5)  # a seed draws the same


def test_group_override_wins_by_insertion_order_and_scoring_keeps_the_best_match():
    lore = book(entry(["rain"], "LOW", order=10, group="weather", group_override=True),
                entry(["rain"], "HIGH", order=90, group="weather", group_override=True),
                entry(["rain"], "PLAIN", order=200, group="weather"))
    assert all(fired(lore, ["rain"], seed=s) == ["HIGH"] for s in range(20))
    scored = book(entry(["rain"], "ONE KEY", group="w", use_group_scoring=True),
                  entry(["rain", "cold"], "TWO KEYS", group="w", use_group_scoring=True))
    assert all(fired(scored, ["cold rain"], seed=s) == ["TWO KEYS"] for s in range(20))
    # An entry in several groups (comma-separated) takes part in each.
    multi = book(entry(["x"], "A", group="g1, g2", group_override=True), entry(["x"], "B", group="g2"))
    assert fired(multi, ["x"]) == ["A"]


def test_a_group_already_in_the_prompt_takes_no_more_on_recursion():
    lore = {"recursive_scanning": True, "entries": [
        entry(["rain"], "It rains: see clouds.", group="sky", group_override=True),
        entry(["clouds"], "CLOUDS", group="sky"),
        entry(["clouds"], "FREE"),
    ]}
    assert fired(lore, ["rain"]) == ["It rains: see clouds.", "FREE"]


def chat(*user_texts):
    """A chat of user messages and short replies, oldest first (the last is the new user message)."""
    out = []
    for text in user_texts:
        out += [text, "ok"]
    return out[:-1]


def test_sticky_keeps_an_entry_for_n_messages_after_it_fired():
    lore = book(entry(["dragon"], "DRAGON", sticky=3))
    # Scan depth 1: only the newest message is read, so only stickiness can keep it.
    assert fired(lore, chat("a dragon!", "and then?"), scan_depth=1) == ["DRAGON"]  # fired 2 messages ago
    assert fired(lore, chat("a dragon!", "and then?", "more?"), scan_depth=1) == []  # 4 messages ago: over
    plain = book(entry(["dragon"], "DRAGON"))
    assert fired(plain, chat("a dragon!", "and then?"), scan_depth=1) == []


def test_cooldown_blocks_an_entry_after_it_fired_and_delay_until_the_chat_is_long_enough():
    lore = book(entry(["dragon"], "DRAGON", cooldown=3))
    assert fired(lore, chat("a dragon!"), scan_depth=1) == ["DRAGON"]
    assert fired(lore, chat("a dragon!", "another dragon!"), scan_depth=1) == []  # 2 messages later: cooling
    assert fired(lore, chat("a dragon!", "hm", "a dragon again!"), scan_depth=1) == ["DRAGON"]  # 4 later: free
    delayed = book(entry(["dragon"], "DRAGON", delay=4))
    assert fired(delayed, chat("a dragon!"), scan_depth=1) == []
    assert fired(delayed, chat("hi", "hello", "a dragon!"), scan_depth=1) == ["DRAGON"]


def test_cooldown_starts_when_the_sticky_span_ends():
    lore = book(entry(["dragon"], "DRAGON", sticky=2, cooldown=4))
    history = ["a dragon!"]
    seen = []
    for _ in range(5):
        history += ["ok", "a dragon!"]
        seen.append(bool(fired(lore, history, scan_depth=1)))
    # Fired at 1; sticky over at 3, then cooling until 7; fires again at 7 (and sticks), cools again.
    assert seen == [False, False, True, False, False]


def test_after_match_decorators_keep_or_retire_an_entry():
    lore = book({"keys": ["oath"], "content": "@@keep_activate_after_match\nTHE OATH", "enabled": True},
                {"keys": ["secret"], "content": "@@dont_activate_after_match\nTHE SECRET", "enabled": True})
    assert fired(lore, chat("the oath", "a", "b", "c"), scan_depth=1) == ["THE OATH"]
    assert fired(lore, chat("the secret"), scan_depth=1) == ["THE SECRET"]
    assert fired(lore, chat("the secret", "a", "b", "the secret"), scan_depth=1) == []


def test_outlet_entries_go_where_the_card_names_their_outlet(tiny_base):
    card = parse_card({"spec": "chara_card_v2", "data": {
        "name": "Ada", "description": "Ada keeps a diary.\n{{outlet::diary}}\nShe is kind.",
        "character_book": {"entries": [
            entry(["monday"], "Monday: rain.", order=2, position=7, outlet_name="diary"),
            entry(["monday"], "Monday: a letter.", order=1, position=7, outlet_name="diary"),
            entry(["monday"], "ELSEWHERE", position=7, outlet_name="other"),
        ]}}})
    messages = build_messages(card, [{"role": "user", "content": "What happened on Monday?"}],
                              tiny_base.tokenizer, 900)
    system = messages[0]["content"]
    assert "Ada keeps a diary.\nMonday: a letter.\nMonday: rain.\nShe is kind." in system
    assert "ELSEWHERE" not in str(messages)  # an outlet the card does not name goes nowhere
    quiet = build_messages(card, [{"role": "user", "content": "Hi"}], tiny_base.tokenizer, 900)
    assert "{{outlet" not in quiet[0]["content"] and "Ada keeps a diary.\n\nShe is kind." in quiet[0]["content"]


def test_reverse_depth_counts_from_the_start_of_the_chat(tiny_base):
    card = parse_card({"spec": "chara_card_v3", "spec_version": "3.0", "data": {
        "name": "Ada", "character_book": {"entries": [
            {"keys": [], "content": "@@reverse_depth 1\nOPENING", "constant": True, "enabled": True}]}}})
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(5)]
    messages = build_messages(card, history, tiny_base.tokenizer, 900)
    chat = [m["content"] for m in messages if not m.get("example")][1:]
    assert chat[:3] == ["m0", "OPENING", "m1"]  # after the first message, however long the chat is


def test_generation_triggers_limit_an_entry_to_those_kinds_of_generation():
    lore = book(entry(["sea"], "always"), entry(["sea"], "on swipes", triggers=["swipe"]),
                entry(["sea"], "on re-rolls", triggers=["regenerate", "swipe"]),
                entry(["sea"], "on continue only", triggers=["continue"]))
    assert fired(lore, ["the sea"]) == ["always"]
    assert sorted(fired(lore, ["the sea"], generation="swipe")) == ["always", "on re-rolls", "on swipes"]
    assert sorted(fired(lore, ["the sea"], generation="regenerate")) == ["always", "on re-rolls"]
    from runtime.characters.lorebook import unsupported

    assert unsupported(lore) == ["lore entry 'sea': SillyTavern generation trigger(s) continue (triggers; Personae "
                                 "generates only normal, swipe, regenerate) is not supported and is ignored"]


def test_the_engine_scans_swipes_and_re_rolls_as_those_generations(make_engine, tiny_base, prompt_spy, tmp_path):
    import json

    from http_server import LiveServer

    from runtime.chat.engine import Turn

    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Tide", "description": "A sailor.", "first_mes": "Ahoy.", "character_book": book(
            entry(["sea"], "NEW-REPLY-LORE", triggers=["normal"]), entry(["sea"], "SWIPE-LORE", triggers=["swipe"]),
            entry(["sea"], "REROLL-LORE", triggers=["regenerate"]))}}
    (tmp_path / "tide.json").write_text(json.dumps(card))
    engine = make_engine(tiny_base, temperature=0, max_new_tokens=3)
    engine.catalog.import_card(tmp_path / "tide.json")
    spy = prompt_spy(engine)

    def lore(index):
        return {name for name in ("NEW-REPLY-LORE", "SWIPE-LORE", "REROLL-LORE")
                if any(name in m["content"] for m in spy.prompts[index])}

    live = LiveServer(engine)
    try:
        chat = [{"role": "assistant", "content": "Ahoy."}, {"role": "user", "content": "The sea is calm"}]
        for _ in range(2):  # the second is SillyTavern's swipe: the same chat sent again
            live.openai().chat.completions.create(model="tide", messages=chat, max_tokens=3)
    finally:
        live.close()
    tide = engine.catalog.get("tide")
    engine.reply(Turn(platform="test", channel="c", user_id="u", text="The sea is rough", character=tide)).result()
    engine.regenerate(Turn(platform="test", channel="c", user_id="u", text="", character=tide)).result()
    assert [lore(i) for i in range(4)] == [{"NEW-REPLY-LORE"}, {"SWIPE-LORE"}, {"NEW-REPLY-LORE"}, {"REROLL-LORE"}]


def test_character_filters_from_a_world_info_file_keep_entries_to_their_characters():
    from runtime.characters.lorebook import unsupported
    from runtime.characters.worldinfo import to_character_book

    world = {"entries": {
        "0": {"uid": 0, "key": ["sea"], "content": "for Mara", "characterFilter": {"names": ["Mara"], "tags": []}},
        "1": {"uid": 1, "key": ["sea"], "content": "not for Mara",
              "characterFilter": {"isExclude": True, "names": ["mara"], "tags": []}},
        "2": {"uid": 2, "key": ["sea"], "content": "by tag", "characterFilter": {"names": [], "tags": ["t1"]}},
        "3": {"uid": 3, "key": ["sea"], "content": "for anyone"}}}
    lore = to_character_book(world)
    assert sorted(fired(lore, ["the sea"], character={"Mara", "mara"})) == ["by tag", "for Mara", "for anyone"]
    assert sorted(fired(lore, ["the sea"], character={"Pixel", "pixel"})) == ["by tag", "for anyone", "not for Mara"]
    assert unsupported(lore) == ["lore entry 'sea': SillyTavern character filter by tags (characterFilter.tags) "
                                 "is not supported and is ignored"]


def test_the_prompt_builder_filters_lore_by_the_character_answering(tiny_base):
    def ask(name):
        card = parse_card({"spec": "chara_card_v2", "data": {"name": name, "character_book": {"entries": [
            entry(["sea"], "ONLY-FOR-MARA", st_characterFilter={"names": ["Mara"], "isExclude": False})]}}})
        return str(build_messages(card, [{"role": "user", "content": "the sea"}], tiny_base.tokenizer, 900))

    assert "ONLY-FOR-MARA" in ask("Mara") and "ONLY-FOR-MARA" not in ask("Pixel")


def test_is_greeting_keeps_an_entry_to_chats_that_opened_with_that_greeting(tiny_base):
    card = parse_card({"spec": "chara_card_v3", "spec_version": "3.0", "data": {
        "name": "Ada", "first_mes": "Hello, {{user}}.", "alternate_greetings": ["Up early, {{user}}?"],
        "character_book": {"entries": [
            {"keys": [], "content": "@@is_greeting 0\nFIRST-GREETING-LORE", "constant": True, "enabled": True},
            {"keys": [], "content": "@@is_greeting 1\nSECOND-GREETING-LORE", "constant": True, "enabled": True}]}}})

    def lore(*history):
        prompt = str(build_messages(card, [*history, {"role": "user", "content": "Hi"}], tiny_base.tokenizer, 900,
                                    user="Ann"))
        return [name for name in ("FIRST-GREETING-LORE", "SECOND-GREETING-LORE") if name in prompt]

    assert lore({"role": "assistant", "content": "Hello, Ann."}) == ["FIRST-GREETING-LORE"]
    assert lore({"role": "assistant", "content": "Up early, Ann?"}) == ["SECOND-GREETING-LORE"]
    # Not known (no greeting, or it was cut from the history): the decorator is not applied.
    assert lore() == ["FIRST-GREETING-LORE", "SECOND-GREETING-LORE"]
    assert lore({"role": "assistant", "content": "Something else."}) == ["FIRST-GREETING-LORE", "SECOND-GREETING-LORE"]
