"""The SQLite log: migrations, messages, full-text search, feedback, forgetting, bindings."""

from __future__ import annotations

import pytest
import sqlite_utils

from runtime.store import Store, StoreError, migrations


def test_migrations_apply_on_an_in_memory_database_and_are_idempotent():
    db = sqlite_utils.Database(memory=True)
    migrations.apply(db)
    migrations.apply(db)
    assert {"users", "conversations", "messages", "feedback", "bindings", "messages_fts"} <= set(db.table_names())
    assert [m.name for m in migrations.applied(db)] == ["m001_initial"]
    assert migrations.pending(db) == []


def log_pair(store, user="u1", text="hello", character="pixel", channel="c"):
    conversation = store.conversation_id("test", channel, character)
    asked = store.log_message(conversation_id=conversation, role="user", text=text, character=character,
                              platform="test", channel=channel, user_id=user)
    answered = store.log_message(conversation_id=conversation, role="assistant", text=f"re: {text}",
                                 character=character, platform="test", channel=channel, reply_to=asked["id"])
    return asked, answered


def test_file_database_uses_wal_and_keeps_messages(tmp_path):
    store = Store(tmp_path / "personae.db")
    log_pair(store)
    assert store.db.journal_mode == "wal"
    again = Store(tmp_path / "personae.db")
    assert [m["text"] for m in again.recent()] == ["hello", "re: hello"]


def test_full_text_search_treats_user_text_as_words():
    store = Store(None)
    log_pair(store, text="the kraken rises")
    log_pair(store, text="calm seas")
    assert [m["text"] for m in store.recent(search="kraken")] == ["the kraken rises", "re: the kraken rises"]
    assert store.recent(search='kraken" OR "calm') == []  # quotes can't inject FTS syntax


def test_feedback_is_one_row_per_user_and_message():
    store = Store(None)
    _, reply = log_pair(store)
    store.add_feedback(reply["id"], "u2", 1, "test")
    store.add_feedback(reply["id"], "u2", -1, "test")
    rows = store.query("select value from feedback")
    assert rows == [{"value": -1}]
    with pytest.raises(ValueError):
        store.add_feedback(reply["id"], "u2", 5)
    with pytest.raises(KeyError):
        store.add_feedback(9999, "u2", 1)


def test_forget_user_removes_their_messages_replies_and_feedback_only():
    store = Store(None)
    _, reply = log_pair(store, user="alice", text="my secret")
    log_pair(store, user="bob", text="bob here")
    store.add_feedback(reply["id"], "alice", 1)
    counts = store.forget_user("alice")
    assert counts == {"messages": 2, "feedback": 1}
    texts = [m["text"] for m in store.recent()]
    assert texts == ["bob here", "re: bob here"]
    assert "alice" in store.opted_out_users()


def test_opt_out_and_in():
    store = Store(None)
    store.set_opt_out("carol", True)
    assert store.opted_out_users() == {"carol"}
    store.set_opt_out("carol", False)
    assert store.opted_out_users() == set()


def test_history_skips_superseded_swipes_and_new_conversation_starts_empty():
    store = Store(None)
    asked, first = log_pair(store)
    conversation = asked["conversation_id"]
    swipe = store.log_message(conversation_id=conversation, role="assistant", text="again", character="pixel",
                              reply_to=asked["id"], swipe_of=first["id"])
    assert [m["id"] for m in store.history(conversation)] == [asked["id"], swipe["id"]]
    fresh = store.new_conversation("test", "c", "pixel")
    assert store.conversation_id("test", "c", "pixel") == fresh
    assert store.history(fresh) == []


def test_bindings_per_channel_and_per_user():
    store = Store(None)
    store.bind("discord", "chan", "pixel")
    store.bind("discord", "chan", "professor-quill")
    store.bind("discord", "dm", "captain-mara-voss", user_id="u9")
    assert store.bound_characters("discord", "chan") == ["pixel", "professor-quill"]
    assert store.bound_characters("discord", "dm", "u9") == ["captain-mara-voss"]
    assert store.bound_characters("discord", "dm", "u8") == []
    assert store.unbind("discord", "chan", "pixel") == 1
    assert store.bound_characters("discord", "chan") == ["professor-quill"]


def test_corrupt_database_is_a_clear_error_and_left_untouched(tmp_path):
    path = tmp_path / "personae.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(path)
    assert path.read_bytes() == before


def test_locked_database_is_a_clear_error(tmp_path):
    import sqlite3

    path = tmp_path / "personae.db"
    Store(path)
    blocker = sqlite3.connect(path)
    blocker.execute("begin exclusive")
    try:
        store = Store.__new__(Store)
        store.path = path
        import threading
        store._lock = threading.RLock()
        store.db = sqlite_utils.Database(sqlite3.connect(path, timeout=0.1, check_same_thread=False))
        with pytest.raises(StoreError, match="locked"):
            store.ensure_user("x")
    finally:
        blocker.rollback()
        blocker.close()
