"""Refuses to publish files that carry a secret: Kiln's own, or anything shaped like a token."""

import re
from collections.abc import Iterable

TOKEN_PATTERNS = {
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
    "OpenAI-style key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Kiln API key": re.compile(r"\bkiln_[A-Za-z0-9_-]{30,}"),
    "webhook secret": re.compile(r"\bwhsec_[A-Za-z0-9+/=]{20,}"),
}
MIN_SECRET_CHARS = 8  # shorter configured values would match by chance


def findings(files: dict[str, bytes], secrets: Iterable[str]) -> list[str]:
    """`file: what` for each file holding a configured secret or a token-shaped string; the
    secret itself is never part of the answer."""
    known = [secret for secret in secrets if len(secret) >= MIN_SECRET_CHARS]
    found = []
    for path, content in sorted(files.items()):
        text = content.decode("utf-8", errors="ignore")
        if any(secret in text for secret in known):
            found.append(f"{path}: a configured secret")
        found += [
            f"{path}: a {kind}" for kind, pattern in TOKEN_PATTERNS.items() if pattern.search(text)
        ]
    return found
