"""WeightsRef: the one parser and printer of 'pixel', 'pixel@3' and 'pixel@base'."""

from __future__ import annotations

import pytest

from runtime.errors import PersonaeError
from runtime.refs import BadWeightsRef, WeightsRef


@pytest.mark.parametrize("text, character, version", [
    ("pixel", "pixel", None), ("pixel@3", "pixel", 3), ("pixel@base", "pixel", "base"), (" pixel@12 ", "pixel", 12),
])
def test_parse_and_print_round_trip(text, character, version):
    ref = WeightsRef.parse(text)
    assert (ref.character, ref.version) == (character, version)
    assert WeightsRef.parse(str(ref)) == ref
    assert ref.is_active is (version is None) and ref.is_base is (version == "base")


def test_a_bare_version_needs_its_character():
    assert WeightsRef.parse("3", character="pixel") == WeightsRef("pixel", 3)
    assert WeightsRef.parse("base", character="pixel").is_base
    assert WeightsRef.parse("pixel@2", character="pixel") == WeightsRef("pixel", 2)
    with pytest.raises(BadWeightsRef, match="names 'quill', not 'pixel'"):
        WeightsRef.parse("quill@2", character="pixel")


@pytest.mark.parametrize("text", ["pixel@v3", "pixel@", "@3", "pixel@3.5", "pixel@-1", "pixel@latest"])
def test_everything_else_is_one_clear_error(text):
    with pytest.raises(BadWeightsRef, match="as in|starts with the character") as caught:
        WeightsRef.parse(text)
    assert isinstance(caught.value, PersonaeError) and caught.value.exit_code == 2 and caught.value.http_status == 400
