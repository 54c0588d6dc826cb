"""The degeneration guard: loops, word lists and gibberish in a reply, caught while it streams. Stdlib only.

Small chat models sampled too loosely stop making sentences. The failures seen with SmolLM2-135M
(README, "Replies that stay coherent") fall into a few kinds, each caught by a cheap signal:

loop        the same word back to back (``fashionista, fashionista, fashionista, fashionista``), a
            phrase repeated back to back three times, or a short reply made mostly of repeats
            (a high share of repeated word trigrams, one content word making a large share of it).
word_list   a long run of comma-separated one- or two-word items (``upbounce, upbeat, great,
            marvel, lightbullego, ...``): seven or more in a row.
gibberish   invented tokens: a word that mixes scripts (Latin + Cyrillic/CJK/...), a word with
            letters from Latin Extended blocks (``Rubezňemineze``) inside an otherwise ASCII reply,
            a very long run of letters (>= 20, or >= 16 in ALL CAPS: ``FLAGGFGAMESTREAKENS``),
            a word with six consonants in a row, or two different invented words (``GREAT HOUSE
            CREAGAMINE ROOM RESULTANCE``): words of 5+ letters that English never uses (wordfreq's
            list, runtime.generation.lexicon), not capitalised names, not sound effects (a letter
            three times in a row: ``BEEEEP``) and not words of the request's names.
improbable  (only when the generator passes per-token probabilities) a run of tokens that the
            model itself found unlikely: mean probability of the sampled tokens over a window
            below a floor, i.e. the sampler walked off the model's distribution. The
            probability to pass is the model's raw probability of the sampled token (softmax of
            the logits at temperature 1, before penalties and truncation).

copy        (``copy_signal(text, earlier)``; the monitor checks it when given ``earlier``) most of the
            reply's word trigrams come from one earlier text: the character's previous reply said
            again. Fluent, but a small model that sees its own copy in the history copies it again
            every turn after (bench transcripts: one reply said ten times over), so the generator
            treats it like degeneration: re-sampled if unseen, else marked and kept out of history.
            While streaming it needs COPY_STREAM_TRIGRAMS trigrams, so a shared opening line
            ("Ahoy there, matey!") is not a copy; at the end of the reply, COPY_MIN_TRIGRAMS.

Two ways to use it:

* ``check_reply(text, probs=None, pieces=None) -> Verdict`` on a finished reply.
* ``DegenerationMonitor`` while streaming: ``monitor.feed(piece_text, prob)`` after every token
  returns a ``Verdict`` with ``degenerate=True`` (and a ``reason``) as soon as a signal fires on
  completed words, else None; ``monitor.finish()`` checks the tail. The monitor only looks at
  words that are complete (followed by a space or punctuation), so a word being spelled out
  token by token never fires early.

Thresholds were chosen to stay silent on the built-in cards' example dialogues and on coherent
SmolLM2 replies (see tests/test_guard.py): ALL-CAPS exclamations (``PLAYER ONE DETECTED!``),
sound effects said twice or three times (``BEEP BEEP``), asterisk actions and footnotes are normal.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

# Tunables (see module docstring).
WORD_REPEAT = 4  # the same word (>= 3 letters) this many times back to back
SHORT_WORD_REPEAT = 6  # ... for 1-2 letter words ("no no no no no no")
PHRASE_REPEAT = 3  # a phrase of 2..12 words this many times back to back
LONG_PHRASE_WORDS = 6  # a phrase this long said twice back to back is already a loop
LIST_ITEMS = 7  # comma-separated short items in a row
LIST_ITEM_WORDS = 2
TRIGRAM_REPEAT_SHARE = 0.34  # share of repeated word trigrams, replies of >= 24 words
TRIGRAM_MIN_WORDS = 24
CONTENT_WORD_COUNT = 5  # one word (>= 4 letters, not a stop word) at least this many times ...
CONTENT_WORD_SHARE = 0.12  # ... and this share of all words
LONG_WORD = 20
LONG_CAPS_WORD = 16
CONSONANT_RUN = 6
INVENTED_WORDS = 2  # different invented words in one reply
INVENTED_MIN_LETTERS = 5
PROB_WINDOW = 16  # tokens
PROB_FLOOR = 0.012  # geometric-mean raw probability over the window below this = off the distribution
PROB_MIN_TOKENS = 16
COPY_SHARE = 0.6  # copy_signal: share of a reply's trigrams found in one earlier text
COPY_MIN_TRIGRAMS = 4
COPY_STREAM_TRIGRAMS = 12  # while streaming, a copy must be at least this long before it fires

_STOP = set(["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "had", "has", "have", "he", "her", "his", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them", "then", "there", "they", "this", "to", "was", "we", "were", "what", "when", "which", "who", "will", "with", "you", "your", "yours", "just", "very", "really", "too", "can", "could", "would", "should", "about", "been", "all", "out", "up", "down", "than", "more", "some", "any", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
_WORD = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*", re.UNICODE)
_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
_VOWELS = set("aeiouyAEIOUY")
_COMMON_ACCENTS = set("éèêëáàâäíìîïóòôöúùûüçñÉÈÊËÁÀÂÄÍÌÎÏÓÒÔÖÚÙÛÜÇÑ")


@dataclass
class Verdict:
    degenerate: bool
    reason: str = ""
    signals: list[str] = field(default_factory=list)
    copied: int = -1  # a copy: the index of the earlier text it repeats (its retry is kept off that text)

    def __bool__(self) -> bool:
        return self.degenerate


def _script(ch: str) -> str:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return "UNKNOWN"
    first = name.split()[0]
    return "CJK" if first in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL") else first


def _word_signals(word: str, ascii_reply: bool) -> str:
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return ""
    scripts = {_script(c) for c in letters}
    if len(scripts) > 1:
        return f"gibberish: mixed scripts in {word!r}"
    if ascii_reply and any(ord(c) > 0x7F and c not in _COMMON_ACCENTS and "LATIN" in scripts for c in letters):
        return f"gibberish: unusual letters in {word!r}"
    plain = re.sub(r"['\u2019\-]", "", word)
    longest = max(_LETTERS.findall(plain) or [""], key=len)
    if len(longest) >= LONG_WORD:
        return f"gibberish: {len(longest)}-letter word {word!r}"
    if longest.isupper() and len(longest) >= LONG_CAPS_WORD:
        return f"gibberish: {len(longest)}-letter ALL-CAPS word {word!r}"
    run = 0
    for c in plain:
        if c.isascii() and c.isalpha() and c not in _VOWELS:
            run += 1
            if run >= CONSONANT_RUN:
                return f"gibberish: consonant run in {word!r}"
        else:
            run = 0
    return ""


def _invented(word: str, exempt: frozenset) -> bool:
    """A word English never uses: 5+ letters, not a Titlecase name, not a sound effect, not in `exempt`."""
    from runtime.generation.lexicon import known_word

    for part in re.split(r"[\-]", word):
        letters = re.sub(r"['\u2019].*$", "", part)  # "mustn't", "ship's": the stem decides
        if (len(letters) < INVENTED_MIN_LETTERS or not letters.isascii() or not letters.isalpha()
                or (letters[0].isupper() and not letters.isupper()) or re.search(r"(.)\1\1", letters.lower())
                or letters.lower() in exempt):
            continue
        if known_word(letters) is False:
            return True
    return False


def _invented_signal(words: list[str], exempt: frozenset, cache: dict) -> str:
    found = []
    for word in words:
        if word not in cache:
            cache[word] = _invented(word, exempt)
        if cache[word] and word.lower() not in (w.lower() for w in found):
            found.append(word)
            if len(found) >= INVENTED_WORDS:
                return "gibberish: invented words " + ", ".join(repr(w) for w in found)
    return ""


def known_words(texts) -> frozenset:
    """The lower-cased words of some texts (names, earlier replies): never counted as invented."""
    return frozenset(w.lower() for text in texts for w in _LETTERS.findall(text or ""))


def _loop_signals(words: list[str]) -> str:
    low = [w.lower() for w in words]
    n = len(low)
    # the same word back to back
    run = 1
    for i in range(1, n):
        run = run + 1 if low[i] == low[i - 1] else 1
        need = WORD_REPEAT if len(low[i]) >= 3 else SHORT_WORD_REPEAT
        if run >= need:
            return f"loop: {words[i]!r} x{run} in a row"
    # a phrase back to back (tandem repeat of period p)
    for p in range(2, 13):
        same = 0
        for i in range(p, n):
            same = same + 1 if low[i] == low[i - p] else 0
            reps = same // p + 1
            if reps >= PHRASE_REPEAT or (p >= LONG_PHRASE_WORDS and reps >= 2):
                return f"loop: phrase {' '.join(words[i - p + 1:i + 1])!r} repeated"
    if n >= TRIGRAM_MIN_WORDS:
        grams = [tuple(low[i:i + 3]) for i in range(n - 2)]
        repeated = len(grams) - len(set(grams))
        if repeated / len(grams) >= TRIGRAM_REPEAT_SHARE:
            return f"loop: {repeated}/{len(grams)} repeated trigrams"
    counts: dict[str, int] = {}
    for w in low:
        if len(w) >= 4 and w not in _STOP:
            counts[w] = counts.get(w, 0) + 1
    if counts:
        word, count = max(counts.items(), key=lambda kv: kv[1])
        if count >= CONTENT_WORD_COUNT and count / max(n, 1) >= CONTENT_WORD_SHARE:
            return f"loop: {word!r} {count} times in {n} words"
    return ""


def _list_signal(text: str) -> str:
    items = re.split(r",", text)
    run = 0
    best = 0
    for k, item in enumerate(items):
        words = _WORD.findall(item)
        # an item ends the run if it is long or carries sentence punctuation
        short = 0 < len(words) <= LIST_ITEM_WORDS and not re.search(r"[.!?;:\n]", item.strip()[:-1] or "")
        if k < len(items) - 1 or run:  # the last item may end the sentence ("..., and more.")
            run = run + 1 if short else 0
        best = max(best, run)
    if best >= LIST_ITEMS:
        return f"word_list: {best} comma-separated short items in a row"
    return ""


def _prob_signal(probs: list[float]) -> str:
    if len(probs) < PROB_MIN_TOKENS:
        return ""
    logs = [math.log(max(p, 1e-12)) for p in probs]
    total = sum(logs[:PROB_WINDOW])
    worst = total
    for i in range(PROB_WINDOW, len(logs)):
        total += logs[i] - logs[i - PROB_WINDOW]
        worst = min(worst, total)
    geo = math.exp(worst / PROB_WINDOW)
    if geo < PROB_FLOOR:
        return f"improbable: {PROB_WINDOW}-token window with geometric-mean probability {geo:.3f}"
    return ""


def _trigrams(text: str) -> set:
    low = [w.lower() for w in _WORD.findall(text)]
    return {tuple(low[i:i + 3]) for i in range(len(low) - 2)}


def copy_signal(text: str, earlier: list[str], share: float = COPY_SHARE) -> str:
    """'copy: ...' when most of the reply's word trigrams come from one earlier text.

    `earlier` holds the character's previous replies in the chat (a reply said again) and, if the
    caller wishes, the prompt's instructions (a post-history instruction read back).
    """
    return _copy(_trigrams(text), [_trigrams(other) for other in earlier], share, COPY_MIN_TRIGRAMS)[0]


def _copy(grams: set, earlier: list[set], share: float, least: int) -> tuple[str, int]:
    """The copy reason and the index of the earlier text copied, or ("", -1)."""
    if len(grams) < least:
        return "", -1
    for k, other in enumerate(earlier):
        overlap = len(grams & other) / len(grams)
        if overlap >= share:
            return f"copy: {overlap:.0%} of the reply's trigrams come from earlier text #{k}", k
    return "", -1


def check_reply(text: str, probs: list[float] | None = None, pieces: list[str] | None = None,
                known: frozenset = frozenset(), _cache: dict | None = None) -> Verdict:
    """All within-reply signals on a finished reply; `probs` (one per generated token) is optional.

    `known`: words that are never invented here (known_words of the prompt's names and earlier replies).
    """
    signals = []
    words = _WORD.findall(text)
    ascii_reply = sum(c.isascii() for c in text) >= 0.9 * max(len(text), 1)
    for word in words:
        s = _word_signals(word, ascii_reply)
        if s:
            signals.append(s)
            break
    for s in (_loop_signals(words), _list_signal(text), _prob_signal(probs) if probs else "",
              _invented_signal(words, known, {} if _cache is None else _cache)):
        if s:
            signals.append(s)
    return Verdict(bool(signals), signals[0] if signals else "", signals)


class DegenerationMonitor:
    """Incremental check while streaming: feed each token's text (and probability) as it comes.

    `feed` returns a degenerate Verdict the first time a signal fires on the completed part of
    the reply, else None; once degenerate it keeps returning that verdict.
    """

    def __init__(self, use_probs: bool = True, earlier: list[str] = (), known: frozenset = frozenset()):
        self.earlier = [_trigrams(text) for text in earlier]  # texts the reply must not say again
        # Only the names are exempt, not the character's earlier replies: a word it invented once (let through
        # alone) would otherwise pass ever after (bench: "SOONLY ... ENTIREBELY" streamed, then the check failed).
        self.known = known
        self._invented: dict = {}  # word -> invented?, kept across the checks of one reply
        self.text = ""
        self.probs: list[float] = []
        self.use_probs = use_probs
        self.verdict: Verdict | None = None
        self._checked_upto = 0

    def feed(self, piece: str, prob: float | None = None) -> Verdict | None:
        if self.verdict:
            return self.verdict
        self.text += piece
        if prob is not None:
            self.probs.append(prob)
        # check only up to the last word boundary: a word being spelled out is not judged early
        boundary = max((i for i, c in enumerate(self.text) if not (c.isalnum() or c in "'\u2019-")), default=-1)
        if boundary + 1 > self._checked_upto:
            self._checked_upto = boundary + 1
            verdict = self._check(self.text[: boundary + 1], COPY_STREAM_TRIGRAMS)
            if verdict:
                self.verdict = verdict
                return verdict
        return None

    def finish(self) -> Verdict:
        if self.verdict:
            return self.verdict
        self.verdict = self._check(self.text, COPY_MIN_TRIGRAMS)
        return self.verdict

    def _check(self, text: str, copy_trigrams: int) -> Verdict:
        verdict = check_reply(text, self.probs if self.use_probs else None, known=self.known, _cache=self._invented)
        if not verdict and self.earlier:
            copied, k = _copy(_trigrams(text), self.earlier, COPY_SHARE, copy_trigrams)
            verdict = Verdict(bool(copied), copied, [copied] if copied else [], k)
        return verdict
