"""Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`)."""

import base64
import secrets
from datetime import datetime
from functools import lru_cache

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
USER_AGENT = "Kiln-Webhooks/1"


def new_secret() -> str:
    """A fresh signing secret in the spec's `whsec_<base64>` form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str, event_id: str, body: str, timestamp: datetime) -> dict[str, str]:
    """The headers of one attempt: the event id stays, the timestamp and signature are fresh."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": _signer(secret).sign(event_id, timestamp, body),
    }


@lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    # Decoding the secret is most of a signer's cost; a rotated secret is simply a new entry.
    return Webhook(secret)
