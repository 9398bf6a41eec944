"""The README documents every setting and keeps to the two-command quickstart."""

import re
from pathlib import Path

from shared.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`(KILN_[A-Z_]+)`", README))
    settings = {f"KILN_{name.upper()}" for name in Settings.model_fields}

    assert settings - documented == set()


def test_the_quickstart_is_two_commands() -> None:
    quickstart = README.split("## Quickstart")[1].split("```sh")[1].split("```")[0]

    assert quickstart.split("\n")[1:-1] == ["uv run kiln demo", "uv run pytest"]
