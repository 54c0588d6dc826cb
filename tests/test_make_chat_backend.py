"""`make chat` compiles llama.cpp only when the configured backend is llamacpp (the default needs no compile)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / "bin" / "python").exists(),
                                reason="needs make and the project's .venv (`make setup`)")


def planned(tmp_path, config: str, backend: str | None = None) -> str:
    """What `make -n chat` would run (recursive makes run with -n too), with llama.cpp not yet installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAE_")}
    (tmp_path / "personae.toml").write_text(config)
    env["PERSONAE_CONFIG"] = str(tmp_path / "personae.toml")
    if backend:
        env["PERSONAE_BACKEND"] = backend
    done = subprocess.run(["make", "-n", "chat", f"LLAMACPP_STAMP={tmp_path / 'not-installed'}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_chat_compiles_llama_cpp_only_for_the_llamacpp_backend(tmp_path):
    assert "GGML_OPENMP=OFF" in planned(tmp_path, 'backend = "llamacpp"\n')
    assert "GGML_OPENMP=OFF" in planned(tmp_path, "", backend="llamacpp")
    for config, backend in (("", None), ('backend = "local"\n', None), ('backend = "llamacpp"\n', "local")):
        plan = planned(tmp_path, config, backend)
        assert "llama-cpp-python" not in plan and "personae chat" in plan
