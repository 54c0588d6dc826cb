"""What a re-sample after a copy must not say again: the copied reply's token n-grams, banned for that attempt only.

When the guard finds that a reply repeats an earlier reply of the character, the one re-sample from the same
prompt with a new seed usually copies again (the model wants to say it; bench transcripts: both attempts
"Aye, Captain! I'm going to tell you about something else..."), or copies another earlier reply much like
it. So the retry gets a ban (transformers' NoBadWordsLogitsProcessor, -inf): after the last NGRAM-1 tokens of a
run that the copied reply, an earlier reply sharing SIMILAR of the attempt's trigrams, or the thrown-away attempt
contains, the token that would continue it may not come. Three exemptions keep the retry fluent and in
character, where a plain ban (like DRY over the whole prompt) broke "Captain Mara Voss" into invented names:

* only tokens that begin a word are banned, so a word is never cut into an invented one mid-way; the model
  must choose another next word instead;
* the first token of a protected name's words (the character's and the user's names, `Request.names`) is
  never banned: without this, a retry of "..., I'm Captain Mara Voss" said "I'm Captain Elfredus" (bench);
* runs the prompt also holds outside the banned replies (the card, the user's turns) stay allowed.

After a loop (a reply going round in itself) the retry gets the same kind of ban on the runs that came back
within the thrown-away attempt: without it, the re-sample from the same prompt looped again (coherence bench,
Quill: both attempts ended in the same refrain).
"""

from __future__ import annotations

from collections import Counter

from runtime.generation.guard import copy_signal

NGRAM = 5  # a run of NGRAM-1 tokens from the copied text may not go on with its next word
SIMILAR = 0.3  # an earlier reply sharing this share of the attempt's word trigrams is banned as well

_word_starts: dict[int, frozenset] = {}


def word_starts(tokenizer) -> frozenset:
    """Ids of tokens that begin a word: their text starts with a space or is not a letter or digit (cached)."""
    key = id(tokenizer)
    if key not in _word_starts:
        ids = list(range(len(tokenizer)))
        texts = tokenizer.batch_decode([[i] for i in ids])
        _word_starts[key] = frozenset(i for i, text in zip(ids, texts) if text and not text[0].isalnum())
    return _word_starts[key]


def _grams(ids: list[int], n: int = NGRAM) -> Counter:
    return Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))


def banned_runs(prompt: list[int], banned: list[list[int]], attempt: list[int], starts: frozenset,
                keep: frozenset = frozenset()) -> list[list[int]]:
    """The n-grams a retry may not complete: the banned replies' and the attempt's, less shared, kept and mid-word ends.

    `prompt` holds each banned reply once (they are in the history); a run found there more often than in the
    banned replies together is shared language and stays allowed.
    """
    in_prompt, in_banned = _grams(prompt), sum((_grams(ids) for ids in banned), Counter())
    candidates = set(in_banned) | set(_grams(attempt))
    return sorted(list(run) for run in candidates
                  if run[-1] in starts and run[-1] not in keep and in_prompt[run] <= in_banned[run])


def name_tokens(tokenizer, names) -> frozenset:
    """The first token of every word of the names, with and without a leading space."""
    words = {word for name in names if name for word in name.split()}
    return frozenset(ids[0] for word in words for text in (word, " " + word)
                     if (ids := tokenizer.encode(text, add_special_tokens=False)))


def copy_ban(row, verdict, tokenizer) -> list[list[int]]:
    """The runs to ban when `verdict` is a copy of one of the row's earlier replies, else none."""
    request = row.stream.request
    earlier = request.earlier
    if tokenizer is None or not 0 <= verdict.copied < len(earlier):
        return []
    ids = row.ids.tolist()
    attempt = ids[row.prompt_length: row.length]
    said = tokenizer.decode(attempt, skip_special_tokens=True)
    texts = [text for k, text in enumerate(earlier) if k == verdict.copied or copy_signal(said, [text], SIMILAR)]
    banned = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    return banned_runs(ids[: row.prompt_length], banned, attempt, word_starts(tokenizer),
                       name_tokens(tokenizer, request.names))


def looped_runs(prompt: list[int], attempt: list[int], starts: frozenset, keep: frozenset = frozenset()) -> list[list[int]]:
    """The attempt's longest runs that came back within it, less the prompt's own, kept tokens and mid-word ends.

    The guard stops a loop early (a word four times in a row), so runs shorter than NGRAM are looked at too,
    longest first: "sea sea sea sea" bans a third "sea" after two, not every word after "sea".
    """
    for n in range(NGRAM, 1, -1):
        in_prompt = _grams(prompt, n)
        runs = sorted(list(run) for run, count in _grams(attempt, n).items()
                      if count >= 2 and run[-1] in starts and run[-1] not in keep and not in_prompt[run])
        if runs:
            return runs
    return []


def retry_ban(row, verdict, tokenizer) -> list[list[int]]:
    """What the one re-sample may not say: a copy's runs, a loop's repeated runs, else nothing."""
    if tokenizer is None:
        return []
    if verdict.reason.startswith("loop"):
        ids = row.ids.tolist()
        return looped_runs(ids[: row.prompt_length], ids[row.prompt_length: row.length], word_starts(tokenizer),
                           name_tokens(tokenizer, row.stream.request.names))
    return copy_ban(row, verdict, tokenizer)
