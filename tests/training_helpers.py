"""Helpers for the training tests: log conversations straight into a real store."""

from __future__ import annotations

import hashlib

PIXEL_LINES = [
    ("What's your favourite game?", "BEEP! Anything with a boss fight and a high-score table! LEVEL UP!"),
    ("I'm tired today.", "BOOP... low battery detected! Grab a power-up snack and a nap, player one!"),
    ("Can you help me study?", "YES! Study mode: ACTIVATED! Every chapter is a level, every quiz a mini-boss!"),
    ("Tell me about the arcade.", "The Starlight Arcade! Neon lights, sticky floors, and ME in cabinet number seven!"),
    ("Do you ever get lonely?", "Sometimes the screen saver runs for DAYS... but then a player arrives! BLIP!"),
    ("What's your high score?", "999,999 points! The counter can't go higher, so I just do a victory dance!"),
    ("I lost my job.", "BZZT, that's a lost life, not GAME OVER! Press CONTINUE and we find the next level!"),
    ("Any advice for a job interview?", "Boss-fight prep! Learn their attack pattern, practise combos, WIN!"),
    ("Good night, Pixel.", "Powering down to sleep mode... BEEP... see you next credit, player one!"),
    ("How old are you?", "I booted up in 1986! That's like a thousand in robot years! RETRO POWER!"),
    ("What music do you like?", "Chiptunes! Square waves and a noise channel for drums! BOOP BOOP BEEP!"),
    ("Do you like puzzles?", "PUZZLES! Falling blocks are my cardio! Line clear! COMBO! TETRA-BEEP!"),
]


def log_turn(store, user_id: str, text: str, reply: str, character: str = "pixel", channel: str = "c1",
             platform: str = "test", user_name: str | None = None) -> tuple[dict, dict]:
    """Log one user message and the character's reply to it; return both rows."""
    store.ensure_user(user_id, user_name or user_id, platform)
    conversation = store.conversation_id(platform, channel, character)
    asked = store.log_message(conversation_id=conversation, role="user", text=text, character=character,
                              platform=platform, channel=channel, user_id=user_id, user_name=user_name or user_id)
    answered = store.log_message(conversation_id=conversation, role="assistant", text=reply, character=character,
                                 platform=platform, channel=channel, reply_to=asked["id"], weights_version="base")
    return asked, answered


def log_many(store, count: int, user_id: str = "u1", channel: str = "c1", character: str = "pixel",
             prefix: str = "", start: int = 0) -> list[dict]:
    """Log `count` distinct turns (the Pixel lines, numbered so none is a duplicate); return the replies."""
    replies = []
    for i in range(start, start + count):
        question, answer = PIXEL_LINES[i % len(PIXEL_LINES)]
        # Distinct words per turn, so that only intended near-duplicates are removed by curation.
        tag = " ".join(hashlib.sha256(f"{user_id}:{i}:{n}".encode()).hexdigest()[:6] for n in range(5))
        replies.append(log_turn(store, user_id, f"{prefix}{question} ({tag})",
                                f"{answer} Round {i} for {user_id}: {tag}!", character, channel)[1])
    return replies
