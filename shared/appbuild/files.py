"""The files of an app: validation of what an LLM wrote, and what Kiln adds to every repo."""

import re
from datetime import UTC, datetime
from pathlib import PurePosixPath

ALLOWED_EXTENSIONS = frozenset(
    {".html", ".css", ".js", ".mjs", ".json", ".md", ".txt", ".svg", ".csv", ".xml", ".map"}
)
MAX_FILE_BYTES = 512 * 1024  # per generated file
MAX_FILES = 50
README_SECTIONS = {
    "summary": ("summary", "overview", "about"),
    "setup": ("setup", "installation", "getting started"),
    "usage": ("usage", "how to use"),
    "code explanation": ("code explanation", "how it works", "code"),
    "licence": ("license", "licence"),
}
"""Each section a README must have, and the headings that count as it."""


def path_errors(files: dict[str, str]) -> list[str]:
    """Why a generated file set cannot be published (empty when it can)."""
    errors = []
    if len(files) > MAX_FILES:
        errors.append(f"at most {MAX_FILES} files, not {len(files)}")
    for path, content in files.items():
        pure = PurePosixPath(path)
        if pure.is_absolute() or not pure.parts or any(p in ("..", ".") for p in pure.parts):
            errors.append(f"{path!r}: paths must be relative, without '.' or '..'")
        elif any(part.startswith(".") for part in pure.parts):
            errors.append(f"{path!r}: hidden files are not allowed")
        elif pure.suffix.lower() not in ALLOWED_EXTENSIONS:
            errors.append(f"{path!r}: extension {pure.suffix or '(none)'} is not allowed")
        if len(content.encode()) > MAX_FILE_BYTES:
            errors.append(f"{path!r}: larger than {MAX_FILE_BYTES} bytes")
    if "index.html" not in files:
        errors.append("index.html is missing")
    return errors


def mit_license(holder: str, now: datetime | None = None) -> str:
    """The MIT licence text for `holder`, this year."""
    year = (now or datetime.now(UTC)).year
    return f"""MIT License

Copyright (c) {year} {holder}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def missing_sections(readme: str) -> list[str]:
    """The README sections (see `README_SECTIONS`) that no heading of `readme` covers."""
    headings = [h.strip().lower() for h in re.findall(r"^#{1,6}\s+(.+)$", readme, re.MULTILINE)]
    return [
        section
        for section, names in README_SECTIONS.items()
        if not any(name in heading for heading in headings for name in names)
    ]


def complete_readme(readme: str, *, task: str, brief: str, files: list[str]) -> str:
    """`readme` with every missing section added, so each repo documents itself."""
    text = readme.strip() or f"# {task}"
    listing = "\n".join(f"- `{name}`" for name in sorted(files))
    added = {
        "summary": f"## Summary\n\n{brief.strip()}",
        "setup": "## Setup\n\nNo build step: this is a static site. Serve the folder with any "
        "web server (for example `python -m http.server`) or open `index.html`.",
        "usage": "## Usage\n\nOpen the published page and follow what it shows.",
        "code explanation": f"## Code explanation\n\nThe repository holds:\n\n{listing}",
        "licence": "## License\n\nMIT: see `LICENSE`.",
    }
    for section in missing_sections(text):
        text += "\n\n" + added[section]
    return text + "\n"
