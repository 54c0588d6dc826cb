"""Chat examples -> token ids with loss only on the character's replies, and the padding collator."""

from __future__ import annotations

IGNORE = -100  # label value the loss skips


def _ids(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                        return_dict=False)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def tokenize_example(tokenizer, example: dict, max_length: int) -> dict | None:
    """input_ids and labels of one example; labels only on assistant replies (the last, or all for card dialogues)."""
    messages = example["messages"]
    train_all = example.get("meta", {}).get("train_on") == "all"
    full = _ids(tokenizer, messages, False)
    labels = [IGNORE] * len(full)
    targets = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not train_all:
        targets = targets[-1:]
    for index in targets:
        # Chat templates render a prefix the same way whether or not more messages follow (ChatML does).
        start = len(_ids(tokenizer, messages[:index], True))
        end = len(_ids(tokenizer, messages[:index + 1], False))
        labels[start:end] = full[start:end]
    if len(full) > max_length:
        # Keep the end: the reply matters more than the oldest context.
        full, labels = full[-max_length:], labels[-max_length:]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": full, "labels": labels, "attention_mask": [1] * len(full)}


def tokenize_examples(tokenizer, examples: list[dict], max_length: int) -> list[dict]:
    """Tokenised examples; those whose reply was cut away entirely are left out."""
    rows = (tokenize_example(tokenizer, example, max_length) for example in examples)
    return [row for row in rows if row is not None]


class PadCollator:
    """Pad a batch to its longest row (labels with IGNORE)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(row["input_ids"]) for row in rows)

        def pad(key, value):
            return torch.tensor([row[key] + [value] * (width - len(row[key])) for row in rows])

        return {"input_ids": pad("input_ids", self.pad_id), "labels": pad("labels", IGNORE),
                "attention_mask": pad("attention_mask", 0)}
