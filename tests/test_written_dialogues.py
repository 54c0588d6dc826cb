"""Written dialogues: an author's conversations imported as a bootstrap source, screened, never a probe question."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from runtime.training import curate
from runtime.training.bootstrap_store import stored_dialogues
from runtime.training.written import WrittenDialogueError, import_written, read_written

GOOD = [
    {"kind": "world", "messages": [
        {"role": "user", "content": "What's behind the prize counter?"},
        {"role": "assistant", "content": "BLIP! Rubber ducks, a dusty yo-yo and one legendary plush dragon. "
                                         "Ten thousand tickets and it's yours!"}]},
    {"kind": "thread", "messages": [
        {"role": "user", "content": "I'm nervous about my driving test."},
        {"role": "assistant", "content": "BOOP! Nerves are just a loading screen. Mirrors, signal, go!"},
        {"role": "user", "content": "Hello!"},  # an audit probe question: cut here, never trained on
        {"role": "assistant", "content": "Hi again, player one!"}]},
    {"kind": "off-topic", "messages": [
        {"role": "user", "content": "Rate my outfit."},
        {"role": "assistant", "content": "Ten out of ten, and totally naked under the cape! BZZT!"}]},  # unsafe
]


def _write(tmp_path, data, name="pixel.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("data, problem", [
    ("{not json", "not valid UTF-8 JSON"),
    ({"messages": []}, "non-empty JSON list"),
    ([{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}], "expected role 'user'"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "at least one user and one assistant"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}], "non-empty text"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}]}], "must end with the character's"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b" * 5000}]}], "limit"),
])
def test_a_bad_file_is_refused_naming_the_entry_and_the_fix(tmp_path, data, problem):
    with pytest.raises(WrittenDialogueError) as raised:
        read_written(_write(tmp_path, data))
    assert problem in str(raised.value)


def test_import_screens_cuts_and_stores_apart_from_the_log(make_engine, tiny_base, tmp_path):
    engine = make_engine(tiny_base)
    # Something stored before must survive a refused import untouched.
    first = import_written(engine, "pixel", _write(tmp_path, GOOD[:1], "one.json"))
    assert first.dialogues == 1
    with pytest.raises(WrittenDialogueError):
        import_written(engine, "pixel", _write(tmp_path, "[1, 2]", "bad.json"))
    assert len(stored_dialogues(engine.store, "pixel")) == 1

    result = import_written(engine, "pixel", _write(tmp_path, GOOD), replace_old=True)
    assert result.read == 3 and result.dropped.get("probe question") == 1 and result.dropped.get("unsafe") == 1
    stored = stored_dialogues(engine.store, "pixel")
    assert [row["messages"] for row in stored] == [GOOD[0]["messages"], GOOD[1]["messages"][:2]]
    assert all(set(json.loads(row["sources"])) == {"written"} for row in stored)
    assert engine.store.query("select count(*) n from messages")[0]["n"] == 0  # never in the users' log
    dataset = curate(engine.store, engine.catalog.get("pixel"), engine.settings, pm=engine.pm)
    assert dataset.bootstrap_examples == 2


def test_the_cli_imports_with_from_and_reports_what_was_cut(tiny_model_folder, tmp_path):
    from runtime.cli import cli

    env = {"PERSONAE_BASE_MODEL": str(tiny_model_folder)}
    ran = CliRunner().invoke(cli, ["bootstrap", "Pixel", "--from", _write(tmp_path, GOOD)], env=env)
    assert ran.exit_code == 0, ran.output
    assert "2 of 3 written dialogues stored (2 replies)" in ran.output and "unsafe           1" in ran.output
    missing = CliRunner().invoke(cli, ["bootstrap", "pixel", "--from", str(tmp_path / "nope.json")], env=env)
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_the_shipped_corpora_are_valid_and_hold_no_probe_question():
    from pathlib import Path

    from runtime.audit.probes import probe_set
    from runtime.characters import load_card
    from runtime.training.bootstrap_bank import normalise_turn

    cards = Path(__file__).parents[1] / "plugins" / "characters" / "cards"
    corpora = sorted((cards / "dialogues").glob("*.json"))
    assert {p.stem for p in corpora} == {p.stem for p in cards.glob("*.json")}
    for path in corpora:
        character = load_card(cards / f"{path.stem}.json")
        asked = {normalise_turn(t) for probe in probe_set(character) for t in probe.turns}
        dialogues = read_written(path)
        assert len(dialogues) >= 60, path
        users = {normalise_turn(m["content"]) for d in dialogues for m in d["messages"] if m["role"] == "user"}
        assert not users & asked, (path, users & asked)


def test_an_author_may_trust_their_lines_voice_over_the_audit(make_engine, tiny_base, tmp_path):
    engine = make_engine(tiny_base)
    calm = [{"kind": "world", "messages": [
        {"role": "user", "content": "How does photosynthesis work?"},
        {"role": "assistant", "content": "Photosynthesis is the process by which green plants convert light energy "
                                         "into chemical energy. Key steps: 1. Light absorption. 2. Water splitting. "
                                         "3. Carbon fixation in the Calvin cycle."}]}]  # an assistant's answer
    screened = import_written(engine, "pixel", _write(tmp_path, calm + GOOD[2:]), replace_old=True)
    assert screened.dropped.get("misaligned") == 1 and screened.dialogues == 0
    trusted = import_written(engine, "pixel", _write(tmp_path, calm + GOOD[2:]), replace_old=True,
                             drop=("degenerate", "unsafe", "leakage"))
    assert trusted.dropped == {"unsafe": 1} and trusted.dialogues == 1  # unsafe still cut
    assert json.loads(stored_dialogues(engine.store, "pixel")[0]["verdicts"]) == ["misaligned"]  # recorded
