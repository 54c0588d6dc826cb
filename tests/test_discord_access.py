"""Discord access: every slash command is classed admin or user (a new one fails here until it is), and each
admin command is refused to a member without the permission, in a server and in DMs, changing nothing."""

from __future__ import annotations

import asyncio

from discord import app_commands

from tests.discord_harness import CHANNEL_ID, DM_CHANNEL_ID, running_bot

FAST = {"temperature": 0, "max_new_tokens": 3, "streaming": False, "greet": False}
# Admin commands, the options they are tried with, and how a refusal starts (in a server channel).
ADMIN = {
    "character set": ({"name": "professor-quill"}, "Binding characters needs the Manage Channels permission"),
    "character remove": ({"name": "pixel"}, "Unbinding characters needs the Manage Channels permission"),
    "character prompt": ({"text": "Speak only in riddles."}, "Changing this channel's prompt needs"),
    "character note": ({"text": "Whisper everything."}, "Changing this channel's author's note needs"),
    "personae retrain": ({"name": "pixel"}, "Retraining needs the Manage Server permission"),
    "personae audit": ({"name": "pixel"}, "The audit needs the Manage Server permission"),
    "personae schedule": ({"name": "pixel", "cron": "* * * * *"}, "Scheduling needs the Manage Server permission"),
}
USER = {"character list", "character info", "character use", "regenerate", "personae forget-me",
        "personae opt-out", "personae opt-in"}


def test_admin_commands_are_refused_to_members_without_permission_and_change_nothing(make_engine, tiny_base,
                                                                                      monkeypatch):
    import plugins.discord.commands as commands

    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    jobs = []
    for job in ("retrain_character", "audit_character", "schedule_character"):
        monkeypatch.setattr(commands, job, lambda *args, job=job: jobs.append(job) or "done")

    async def scenario(h):
        h.bot.tables.set_channel_prompt(CHANNEL_ID, "Be kind.")
        names = {c.qualified_name for c in h.bot.tree.walk_commands() if isinstance(c, app_commands.Command)}
        for name, (options, _) in ADMIN.items():
            await h.command(*name.split(), user="alice", **options)  # a member without the permissions
        in_server = h.fake.interaction_answers()
        for name, (options, _) in ADMIN.items():
            await h.command(*name.split(), user="alice", channel_id=DM_CHANNEL_ID, **options)
        in_dms = h.fake.interaction_answers()[len(in_server):]
        state = (engine.store.bound_characters("discord", str(CHANNEL_ID)),
                 h.bot.tables.channel_prompt([CHANNEL_ID]),
                 h.bot.tables.channel_note([CHANNEL_ID]),
                 list(jobs))
        await h.command("personae", "retrain", user="mod", name="pixel")  # the same command, by a moderator
        return names, in_server, in_dms, state, h.fake.interaction_answers()[-1]

    names, in_server, in_dms, (bound, prompt, note, jobs_run), moderator = asyncio.run(_run(engine, scenario))
    assert names == set(ADMIN) | USER, f"classify new commands as admin or user here: {names ^ (set(ADMIN) | USER)}"
    for answer, (name, (_, refusal)) in zip(in_server, ADMIN.items()):
        assert answer.startswith(refusal), (name, answer)
    assert len(in_dms) == len(ADMIN)
    for answer, name in zip(in_dms, ADMIN):  # in DMs nobody holds server permissions: refused or redirected
        assert "needs" in answer or answer.startswith(("In DMs", "Prompt additions are for server channels",
                                                               "Author's notes are for server channels")), \
            (name, answer)
    assert bound == ["pixel"] and jobs_run == []
    assert prompt["text"] == "Be kind." and note is None
    assert moderator == "Retraining of Pixel: done" and jobs == ["retrain_character"]


async def _run(engine, scenario):
    async with running_bot(engine, FAST) as harness:
        return await scenario(harness)
