"""Webhook delivery: signing, retry policy, SSRF guard and the sender."""
