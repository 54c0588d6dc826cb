"""Shared by the tests that drive the HTTP API with the official openai client."""

import openai
import pytest


def refused_by(ask, server, param: str, **body) -> str:
    """Call `ask(server, **body)`, expect the client's 400 naming `param`; return the error's message."""
    with pytest.raises(openai.BadRequestError) as caught:
        ask(server, **body)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body
    return caught.value.body["message"]
