"""Characters: cards and card files, the catalog of every character, and prompt assembly.

The names below are the public API plugins use (`from runtime.characters import load_card`).
"""

from runtime.characters.card import CardError, Character, LoreEntry, parse_card
from runtime.characters.card_files import card_dict, load_card, placeholder_avatar, read_png_card, save_card
from runtime.characters.catalog import Catalog, UnknownCharacter
from runtime.characters.prompt import build_messages

__all__ = ["CardError", "Catalog", "Character", "LoreEntry", "UnknownCharacter", "build_messages", "card_dict",
           "load_card", "parse_card", "placeholder_avatar", "read_png_card", "save_card"]
