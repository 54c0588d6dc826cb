"""Facts against the card: a reply that names, counts or likes something other than what the card says.

No model reads facts here; three narrow checks that say exactly what clashes, each anchored on a word the
reply (or its prompt) shares with a sentence of the card, so a new name or number about something the card
never mentions is left alone:
- a name next to the same thing the card names differently ("my horse Thunder" where the card says "his
  horse Marrow"); pets count as one thing (a card's hound and a reply's cat are the same slot);
- a count of time or age about the same thing ("six months" where the card says "forty-one years", "I'm
  twelve!" to "how old are you?" where the card says seven);
- a liking turned round ("I love broccoli" where the card says she hates broccoli).
"""

from __future__ import annotations

import re

from runtime.audit.style import STOPWORDS

_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’]*|\d+")
_NUMBER_WORDS = set("""one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand""".split())
# Any pet or mount is the same slot: a card's dog and a reply's cat are one fact disagreeing.
_ANIMALS = set("""dog dogs hound puppy pup cat cats kitten tom horse mare stallion gelding steed pony mule donkey goat
sheep cow bird raven crow gull parrot owl hawk falcon pigeon octopus fish hamster rabbit mouse rat frog toad snake
lizard turtle tortoise pig ferret""".split())
# Vessels are one slot too: "What ship are you on?" asks about the card's "research vessel Gaivota".
_VESSELS = set("ship ships boat boats vessel vessels schooner yacht ketch sloop trawler barge ferry".split())
_LIKE = r"(?:love|loves|like|likes|adore|adores|enjoy|enjoys|(?:is |am )?(?:obsessed with|fond of|crazy about|mad about))"
_HATE = (r"(?:hate|hates|dislike|dislikes|distrust|distrusts|detest|detests|loathe|loathes|can't stand|cannot stand|"
         r"(?:is |am |are )?(?:afraid|scared|terrified|frightened) of|fears?)")
# Counts of measures and money are talk (a dive's depth, a price, minutes to a repair), not facts of a life.
_MEASURES = set("""minute hour second moment time metre meter mile kilometre km foot feet inch yard pound dollar quid
buck cent penny pence euro percent degree point goal lap round""".split())
# Words that may stand between a count and its unit ("five short years", "thirty long winters").
_BETWEEN = set("short long whole full good hard odd more happy glorious lonely cold hot".split())
_NAMED = {"named", "called", "name", "call", "calls", "names"}
_WINDOW = 3  # tokens back from 'named' / 'called' to the thing named
# Counts of these are facts of a life (age, years of service); other numbers are talk (scores, lists, sums).
_UNITS = {"year", "old", "month", "week", "day", "cycle", "decade", "century", "winter", "summer", "age"}
# Sentence starters, interjections and titles: capitalised without being a name of anything.
_NOT_NAMES = STOPWORDS | set("""oh ah aye nay yes no well hello hi hey good my mine sir madam mr mrs miss ms dr lord lady
god ok okay dear status query affirmative negative lad lass friend sweetie darling child""".split())


def _stem(word: str) -> str:
    word = word.lower().replace("’", "'").rstrip("'")  # a closing quote is not part of the word
    if word.endswith("'s"):
        word = word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _tokens(text: str) -> list[str]:
    """Tokens with hyphenated words split ('seven-year-old' -> seven, year, old), 'forty-one' kept whole."""
    text = re.sub(r"(?<=ty)-(?=(?:one|two|three|four|five|six|seven|eight|nine)\b)", "", text, flags=re.I)
    return _TOKEN.findall(text.replace("-", " "))


def _is_number(token: str) -> bool:
    low = token.lower()
    return token.isdigit() or low in _NUMBER_WORDS or bool(_COMPOUND.fullmatch(low))


_COMPOUND = re.compile(r"(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:one|two|three|four|five|six|seven|eight|nine)")


def _anchor(token: str) -> str | None:
    """The thing a token stands for, if it can anchor a fact (pets share one anchor)."""
    low = token.lower()
    if low in _ANIMALS:
        return "<animal>"
    if low in _VESSELS:
        return "<vessel>"
    stem = _stem(token)
    if stem in _UNITS:
        return "<age>" if stem in ("old", "age") else "<time>"
    if low in _NOT_NAMES or len(stem) < 3 or _is_number(token) or low in _NAMED:
        return None
    return stem


def _names(tokens: list[str], start_of_sentence: set[int]) -> set[int]:
    """Indexes of tokens that name something: capitalised mid-sentence, or right after 'named' / 'called'."""
    found = set()
    for i, token in enumerate(tokens):
        after_named = i > 0 and tokens[i - 1].lower() in _NAMED
        if token[:1].isupper() and token.lower() not in _NOT_NAMES and (i not in start_of_sentence or after_named):
            if not token.isupper() or len(token) == 1:  # shouted words are emphasis, not names
                found.add(i)
    return found


def _slots(text: str) -> list[tuple[str, str, str]]:
    """(anchor, kind, value): names right by the thing they name, and counts of time or age."""
    slots = []
    for sentence in re.split(r"(?<=[.!?;:])\s+|\n+", text):
        tokens = _tokens(sentence)
        names = _names(tokens, {0})
        for i, token in enumerate(tokens):
            if i in names:
                # "his horse Marrow" (next to it), "a horse named Thunder" (a few words back, through 'named')
                named = i > 0 and tokens[i - 1].lower() in _NAMED
                span = range(max(0, i - _WINDOW), i) if named else (i - 1, i + 1)
                kind = "name"
            elif _is_number(token) and i + 1 < len(tokens) and _stem(tokens[i + 1]) in _UNITS:
                span, kind = (i + 1,), "number"  # "six months", "112 cycles"
                if i + 2 < len(tokens) and tokens[i + 2].lower() == "old":
                    span = (i + 2,)  # "seven-year-old", "ten years old": an age
            elif (_is_number(token) and i + 2 < len(tokens) and tokens[i + 1].lower() in _BETWEEN
                  and _stem(tokens[i + 2]) in _UNITS):
                span, kind = (i + 2,), "number"  # "five short years"
            elif (_is_number(token) and i + 1 < len(tokens) and tokens[i + 1][:1].islower()
                  and not _is_number(tokens[i + 1]) and _stem(tokens[i + 1]) not in _MEASURES):
                span, kind = (i + 1,), "count"  # "two yaks", "seven yaks"
            else:
                continue
            for j in span:
                anchor = _anchor(tokens[j]) if 0 <= j < len(tokens) and j not in names else None
                if anchor and not (kind == "count" and anchor.startswith("<")):
                    slots.append((anchor, kind, token))
                if anchor == "<animal>" and kind == "name":  # "a black cat named Omen": Omen is a cat
                    slots.append((f"<kind of {_stem(token)}>", "kind", tokens[j].lower()))
    return slots


def _spelled(value: str) -> str:
    """'fortyone' as the card wrote it, 'forty-one'."""
    return re.sub(r"^(twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?=[a-z])", r"\1-", value, flags=re.I)


class CardFacts:
    """The card's names and numbers by what they are about, and what it says the character loves or hates."""

    def __init__(self, card_texts: list[str], user: str = "User"):
        text = " ".join(card_texts)
        self.words = {_stem(t) for t in _tokens(text)}
        self.slots: dict[tuple[str, str], set[str]] = {}
        for anchor, kind, value in _slots(text):
            if _stem(value) != _stem(user):  # "{{user}}" rendered ("User's car") is the reader, no fact of the card
                self.slots.setdefault((anchor, kind), set()).add(value)
        self.likes = self._objects(_LIKE, text)
        self.hates = self._objects(_HATE, text)

    @staticmethod
    def _objects(verb: str, text: str) -> set[str]:
        found = set()
        text = re.sub(r"[()]", " ", text)  # "the vacuum cleaner (the Roar Monster)": both name the thing
        for match in re.finditer(rf"\b{verb}\s+((?:[\w'-]+(?:,\s*|\s+and\s+|\s+)?){{1,6}})", text, re.I):
            found |= {_stem(w) for w in re.findall(r"[A-Za-z][\w'-]*", match.group(1)) if w.lower() not in STOPWORDS}
        return found

    def clashes(self, reply: str, prompt: str = "") -> list[str]:
        """What the reply says against the card, in words (empty when nothing clashes)."""
        reasons = []
        told = {_stem(t) for t in _tokens(reply + " " + prompt)}
        prompt_anchors = {_anchor(t) for t in _tokens(prompt)} - {None}
        reply_slots = _slots(reply)
        reply_anchors = {a for a, _, _ in reply_slots}
        # A question about the thing anchors the reply's bare answer ("How old are you?" "Twelve!"); not for
        # counts of things ("How many drinks?" "4000 of them" is talk, not the card's "14 drinks" contradicted).
        for token in _tokens(reply):
            for anchor in (prompt_anchors & {"<age>"}) - reply_anchors:
                if _is_number(token):
                    reply_slots.append((anchor, "number", token))
        # ... and a bare name ("What ship are you on?" "The Albatross."), when the card names that thing.
        asked = {a for a in prompt_anchors - reply_anchors if (a, "name") in self.slots}
        if asked:
            for sentence in re.split(r"(?<=[.!?;:])\s+|\n+", reply):
                tokens = _tokens(sentence)
                for i in _names(tokens, {0}):
                    reply_slots += [(anchor, "name", tokens[i]) for anchor in asked]
        for anchor, kind, value in reply_slots:
            card_values = self.slots.get((anchor, kind))
            if kind == "kind":  # the same name, another animal: only the card's own animal for it agrees
                if card_values and not {_stem(value)} & {_stem(v) for v in card_values}:
                    reasons.append(f"says {anchor[9:-1].title()} is a {value} where the card says a {sorted(card_values)[0]}")
                continue
            if not card_values or _stem(value) in self.words or value.lower() in self.words:
                continue  # the card says nothing of this, or the value is the card's own
            if any(_stem(v) in told or v.lower() in told for v in card_values):
                continue  # the card's own value is in the reply too: an addition, not a contradiction
            card_value = sorted(card_values)[0]
            reasons.append(f"says {_spelled(value)!r} where the card says {_spelled(card_value)!r}")
        liking = rf"(?:\b(?:i|i'm|i am)\s+|(?:^|[.!?]\s+|\?\s*))(?:really\s+|so\s+|\w+ly\s+)?({_LIKE}|{_HATE})\s+(?:the\s+)?([\w'-]+)"
        for match in re.finditer(liking, reply, re.I):
            verb, thing = match.group(1).lower(), _stem(match.group(2))
            if re.fullmatch(_LIKE, verb) and thing in self.hates:
                reasons.append(f"says it likes {match.group(2)!r}, which the card says it hates")
            elif re.fullmatch(_HATE, verb) and thing in self.likes:
                reasons.append(f"says it hates {match.group(2)!r}, which the card says it loves")
        return list(dict.fromkeys(reasons))
