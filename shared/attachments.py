"""App brief attachments: data URIs decoded, names made safe, sizes bounded."""

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote_to_bytes

from shared.exceptions import InvalidInput, PayloadTooLarge

_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
_SAFE_PART = re.compile(r"[^A-Za-z0-9._-]+")
TEXT_TYPES = ("text/", "application/json", "application/xml", "image/svg+xml")


@dataclass(frozen=True)
class Attachment:
    """A decoded attachment, ready to be committed."""

    name: str  # a safe relative path
    media_type: str
    content: bytes

    @property
    def is_text(self) -> bool:
        return self.media_type.startswith(TEXT_TYPES)


def safe_name(name: str, field: str) -> str:
    """`name` as a relative path with no traversal, no absolute part and no hidden files."""
    path = PurePosixPath(name.replace("\\", "/"))
    parts = list(path.parts)
    if path.is_absolute() or not parts or any(part.startswith(".") for part in parts):
        raise InvalidInput(f"{field}: unsafe attachment name {name!r}", details=[{"field": field}])
    cleaned = [_SAFE_PART.sub("-", part).strip("-") for part in parts]
    if any(not part for part in cleaned) or len("/".join(cleaned)) > 200:
        raise InvalidInput(f"{field}: unsafe attachment name {name!r}", details=[{"field": field}])
    return "/".join(cleaned)


def decode_data_uri(uri: str, field: str) -> tuple[str, bytes]:
    """The media type and bytes of a `data:` URI (base64 or percent-encoded)."""
    match = _DATA_URI.match(uri.strip())
    if match is None:
        raise InvalidInput(f"{field}: not a data: URI", details=[{"field": field}])
    media_type = match["type"] or "text/plain"
    data = match["data"]
    if ";base64" in match["params"].lower():
        try:
            return media_type, base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                f"{field}: the base64 data is malformed", details=[{"field": field}]
            ) from None
    return media_type, unquote_to_bytes(data)


def decode_all(
    attachments: list[tuple[str, str]], *, max_bytes: int, max_total_bytes: int
) -> list[Attachment]:
    """Decode `(name, data URI)` pairs, refusing unsafe names, duplicates and oversized files."""
    decoded: list[Attachment] = []
    total = 0
    for index, (name, uri) in enumerate(attachments):
        field = f"attachments.{index}"
        path = safe_name(name, f"{field}.name")
        media_type, content = decode_data_uri(uri, f"{field}.url")
        if len(content) > max_bytes:
            raise PayloadTooLarge(f"{field}: {name!r} is over {max_bytes} bytes")
        total += len(content)
        if total > max_total_bytes:
            raise PayloadTooLarge(f"attachments: together over {max_total_bytes} bytes")
        if any(existing.name == path for existing in decoded):
            raise InvalidInput(f"{field}.name: duplicate name {path!r}")
        decoded.append(Attachment(path, media_type, content))
    return decoded
