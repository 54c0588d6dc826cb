"""Preference training on the tiny model: KTO from 👍/👎, DPO from swipes, read from the real SQLite log."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from training_helpers import PIXEL_LINES, log_many, log_turn

from runtime.chat.engine import Turn
from runtime.cli import cli
from runtime.training import TooLittlePreference, preference_data, registry_for, retrain
from runtime.training.config import TrainingConfig, TrainingError

FAST = dict(max_steps=2, batch_size=2, max_length=320, lr=1e-3, warmup=0, threads=1, min_preference=4, gate="loss",
            gate_tolerance=10.0)
OFF = "As an AI language model I cannot have a favourite anything. Is there something else I can help with?"


def log_swipes(store, count: int, user_id: str = "u1", channel: str = "swipes") -> list[tuple[dict, dict]]:
    """`count` turns whose first reply was swiped away for a second one, logged as the engine logs a /regen."""
    pairs = []
    for i in range(count):
        question, answer = PIXEL_LINES[i % len(PIXEL_LINES)]
        asked, first = log_turn(store, user_id, f"{question} #{i}", f"{OFF} ({i})", channel=channel)
        kept = store.log_message(conversation_id=asked["conversation_id"], role="assistant", text=f"{answer} #{i}",
                                 character="pixel", platform="test", channel=channel, reply_to=asked["id"],
                                 swipe_of=first["id"], weights_version="base")
        pairs.append((first, kept))
    return pairs


def log_ratings(store, count: int, user_id: str = "u2") -> None:
    """`count` rated replies: in-character ones 👍, assistant-speak 👎 (alternating)."""
    for i in range(count):
        question, answer = PIXEL_LINES[i % len(PIXEL_LINES)]
        liked = i % 2 == 0
        _, reply = log_turn(store, user_id, f"{question} ({i})", answer if liked else f"{OFF} [{i}]", channel="rated")
        store.add_feedback(reply["id"], "rater", 1 if liked else -1, source="test")


@pytest.fixture
def engine(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    log_many(engine.store, 12)
    return engine


def test_preference_data_comes_from_the_real_log(engine):
    pairs = log_swipes(engine.store, 3)
    log_ratings(engine.store, 4)
    # Swiped away, then liked: no preference either way. An opted-out user's swipes never count.
    engine.store.add_feedback(pairs[2][0]["id"], "rater", 1)
    log_swipes(engine.store, 2, user_id="private", channel="private")
    engine.store.set_opt_out("private", True)
    data = preference_data(engine.store, engine.catalog.get("pixel"))
    assert len(data.dpo) == 2 and data.skipped["opted_out"] == 2
    first = data.dpo[0]
    assert first["chosen"] == [{"role": "assistant", "content": pairs[0][1]["text"]}]
    assert first["rejected"] == [{"role": "assistant", "content": pairs[0][0]["text"]}]
    assert first["prompt"][0]["role"] == "system" and first["prompt"][-1]["content"].endswith("#0")
    # The kept reply of turn 0 is context of turn 1; the swiped-away one is not.
    context = [m["content"] for m in data.dpo[1]["prompt"]]
    assert pairs[0][1]["text"] in context and pairs[0][0]["text"] not in context
    assert (data.liked, data.disliked) == (3, 2)  # the liked swiped-away reply is a 👍 row for KTO
    labels = {row["completion"][0]["content"]: row["label"] for row in data.kto}
    assert labels.pop(pairs[2][0]["text"]) is True
    assert all(label == (OFF not in text) for text, label in labels.items())


def test_a_regeneration_through_the_engine_becomes_a_dpo_pair(engine):
    turn = Turn(platform="test", channel="regen", user_id="u9", text="Hi Pixel!", character=engine.catalog.get("pixel"),
                sampling={"temperature": 1.0, "max_new_tokens": 6, "seed": 1})
    first = engine.reply(turn)
    first.result()
    again = engine.regenerate(Turn(**{**turn.__dict__, "sampling": {"temperature": 1.0, "max_new_tokens": 6,
                                                                    "seed": 2}}))
    again.result()
    data = preference_data(engine.store, engine.catalog.get("pixel"))
    if first.message["text"].strip() == again.message["text"].strip():
        assert data.dpo == [] and data.skipped["same_text"] == 1
    else:
        assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in data.dpo] == [
            (again.message["text"], first.message["text"])]


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_kto_and_dpo_alone_train_a_lora_candidate_with_trl(engine, method):
    log_swipes(engine.store, 4)
    log_ratings(engine.store, 4)
    outcome = retrain(engine, "pixel", config=TrainingConfig(method=method, **FAST), progress=False,
                      in_subprocess=False)
    assert outcome.status == "promoted", outcome.reason
    version = outcome.version
    assert version.kind == "lora" and version.manifest["training"]["method"] == method
    stage = outcome.metrics["preference"]
    assert stage["kind"] == method and stage["rows"] == 4 and stage["steps"] == 2
    assert any(key.startswith("rewards_") for key in stage)
    assert version.manifest["training"]["preference_data"]["hash"].startswith("sha256:")
    files = set(version.manifest["files"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not any(name.startswith("ref/") for name in files)  # TRL's frozen reference adapter is not shipped
    reply = engine.reply(Turn(platform="test", channel="c9", user_id="t", text="Hi!", character=engine.catalog.get("pixel"),
                              version=str(version.number), sampling={"temperature": 0, "max_new_tokens": 3}))
    reply.result()
    assert reply.message["weights_version"] == version.label


def test_a_preference_stage_has_its_own_step_limit(engine):
    log_swipes(engine.store, 4)
    config = TrainingConfig(method="lora", preference="dpo", **{**FAST, "max_steps": 3}, preference_max_steps=1)
    outcome = retrain(engine, "pixel", config=config, progress=False, in_subprocess=False)
    assert outcome.status == "promoted", outcome.reason
    assert outcome.metrics["preference"]["steps"] == 1 and outcome.metrics["steps"] == 4  # 3 supervised + 1 DPO
    assert TrainingConfig(max_steps=5).preference_steps == 5 and TrainingConfig().preference_steps == -1


def test_a_schedule_runs_dpo_as_a_stage_after_supervised_training_in_a_child_process(make_engine, tiny_base):
    from runtime.jobs import add_schedule, list_schedules, run_now

    engine = make_engine(tiny_base, training=FAST)
    log_many(engine.store, 12)
    log_swipes(engine.store, 4)
    add_schedule(engine.settings, "pixel", "0 3 * * *", "lora", min_new_turns=0, preference="dpo")
    assert list_schedules(engine.settings)[0]["preference"] == "dpo"
    outcome = run_now(engine, "pixel", timeout=600)  # the real scheduler, a low-priority training process
    assert outcome.status == "promoted", outcome.reason
    metrics = outcome.metrics
    assert metrics["steps"] == 4 and metrics["preference"]["steps"] == 2  # 2 supervised + 2 DPO steps
    assert metrics["val_loss"] is not None and metrics["pid"] != os.getpid()
    assert outcome.version.manifest["training"]["preference"] == "dpo"
    history = json.loads((outcome.version.folder / "training.json").read_text())["log_history"]
    assert any(entry.get("stage") == "dpo" for entry in history)


def test_too_little_preference_data_names_the_count_and_what_to_do(engine, tiny_base):
    log_swipes(engine.store, 2)
    outcome = retrain(engine, "pixel", config=TrainingConfig(method="dpo", **FAST), progress=False)
    assert outcome.status == "failed"
    assert "only 2 DPO pairs" in outcome.reason and "4 needed" in outcome.reason and "re-roll" in outcome.reason
    assert registry_for(engine).versions("pixel") == []
    with pytest.raises(TooLittlePreference, match=r"only 0 rated replies \(0 👍, 0 👎\)"):
        preference_data(engine.store, engine.catalog.get("pixel")).require("kto", 4)
    result = CliRunner().invoke(cli, ["train", "pixel", "--method", "kto", "--max-steps", "1"],
                                env={"PERSONAE_BASE_MODEL": str(tiny_base.folder)})
    assert result.exit_code == 2 and "rated replies" in result.output and "rate more replies" in result.output


def test_bad_preference_settings_are_refused():
    with pytest.raises(TrainingError, match="unknown preference stage"):
        TrainingConfig(preference="ppo")
    with pytest.raises(TrainingError, match="already trains on preferences"):
        TrainingConfig(method="dpo", preference="kto")
    assert TrainingConfig(method="kto").weights_kind == "lora"
    from runtime.jobs import ScheduleError, add_schedule
    from runtime.config import load_settings

    with pytest.raises(ScheduleError, match="already trains on preferences"):
        add_schedule(load_settings(), "pixel", "0 3 * * *", "kto", preference="dpo")
    assert TrainingConfig(method="hybrid", preference="dpo").preference_kind == "dpo"


@pytest.mark.real_model
def test_dpo_on_real_smollm2_moves_toward_the_kept_swipes(make_engine, real_base):
    engine = make_engine(real_base)
    log_many(engine.store, 6)
    log_swipes(engine.store, 8)
    config = TrainingConfig(method="dpo", max_steps=3, batch_size=2, max_length=320, warmup=0, threads=1,
                            min_preference=8, gate="loss", gate_tolerance=10.0)
    outcome = retrain(engine, "pixel", config=config, progress=False, in_subprocess=False)
    assert outcome.status == "promoted", outcome.reason
    stage = outcome.metrics["preference"]
    assert stage["rows"] == 8 and stage["steps"] == 3
    # TRL's implicit rewards at the last step (after two updates): the kept replies gained on the swiped-away ones.
    assert stage["rewards_margins"] > 0 and stage["rewards_chosen"] > stage["rewards_rejected"]
    reply = engine.reply(Turn(platform="test", channel="c9", user_id="t", text="Hi Pixel!",
                              character=engine.catalog.get("pixel"), sampling={"temperature": 0, "max_new_tokens": 12}))
    assert reply.result().strip() and reply.message["weights_version"] == outcome.version.label
