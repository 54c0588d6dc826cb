"""End to end on the real SmolLM2: logged chats -> scheduled run -> subprocess training -> gate -> hot swap."""

from __future__ import annotations

from training_helpers import log_many

from runtime.chat.engine import Turn
from runtime.jobs import add_schedule, list_schedules, run_now, start_scheduler
from runtime.training import registry_for
from runtime.training.runs import runs

TRAINING = {"max_steps": 3, "max_length": 96, "batch_size": 2, "lr": 5e-4, "warmup": 0, "gate": "loss",
            "subprocess_threads": 1, "nice": 0}  # nice 0: the shared test machine would starve a niced run


def ask(engine, text):
    return engine.reply(Turn(platform="test", channel="e2e", user_id="tester", user_name="Ann", text=text,
                             character=engine.catalog.get("pixel"), sampling={"temperature": 0, "max_new_tokens": 6}))


def test_scheduled_retrain_trains_gates_promotes_and_the_running_engine_swaps(make_engine, real_base):
    engine = make_engine(real_base, training=TRAINING)
    before = ask(engine, "Hello Pixel!")
    before.result()
    assert before.message["weights_version"] == "lora:pixel@1"  # the weights Pixel ships, adopted on first use
    log_many(engine.store, 24, user_id="u1", channel="c1")
    log_many(engine.store, 12, user_id="u2", channel="c2", start=24)

    add_schedule(engine.settings, "pixel", "0 3 * * *", "lora", min_new_turns=10)
    scheduler = start_scheduler(engine)
    try:
        assert [s["character"] for s in list_schedules(engine.settings)] == ["pixel"]
        outcome = run_now(engine, "pixel", timeout=1500)  # through the running scheduler
    finally:
        scheduler.shutdown(wait=False)

    assert outcome.status == "promoted", outcome.reason
    assert "validation loss" in outcome.reason
    assert outcome.metrics["steps"] == 3 and outcome.metrics["pid"] != __import__("os").getpid()
    assert outcome.metrics["val_loss"] <= outcome.metrics["reference_val_loss"] * 1.02
    registry = registry_for(engine)
    active = registry.active("pixel")
    assert active is not None and active.number == outcome.version.number and active.kind == "lora"
    assert active.manifest["data_hash"] and active.manifest["training"]["max_steps"] == 3
    assert (active.folder / "loss.png").is_file()
    assert runs(engine.store, "pixel")[0]["state"] == "promoted"

    # The same engine, never restarted, now answers with the promoted version (hot swap).
    after = ask(engine, "Hello again, Pixel!")
    after.result()
    assert after.message["weights_version"] == active.label == "lora:pixel@2"
