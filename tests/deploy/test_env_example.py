"""`.env.example` lists every setting once, with its real default and a line saying what it is."""

import re
from pathlib import Path

from pydantic import TypeAdapter

from shared.config import Settings

LINES = (Path(__file__).resolve().parents[2] / ".env.example").read_text().splitlines()
VARIABLE = re.compile(r"^(?:# )?(KILN_[A-Z0-9_]+)=(.*)$")


def listed() -> dict[str, tuple[int, str]]:
    """Each variable's line number and shown value."""
    found: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(LINES):
        if match := VARIABLE.match(line):
            assert match[1] not in found, f"{match[1]} is listed twice"
            found[match[1]] = (number, match[2])
    return found


def test_lists_every_setting_and_nothing_else() -> None:
    settings = {f"KILN_{name.upper()}" for name in Settings.model_fields}

    assert set(listed()) == settings


def test_shows_each_default() -> None:
    for name, (_, shown) in listed().items():
        field = Settings.model_fields[name.removeprefix("KILN_").lower()]
        assert field.annotation is not None
        if shown == "":
            assert field.default in (None, ""), name
        else:
            assert TypeAdapter(field.annotation).validate_python(shown) == field.default, name


def test_says_what_each_one_means() -> None:
    for name, (number, _) in listed().items():
        above = LINES[number - 1]
        assert above.startswith("# "), name
        assert not VARIABLE.match(above), name
