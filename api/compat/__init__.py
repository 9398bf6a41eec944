"""Compatibility APIs: thin adapters that speak other systems' formats over Kiln's jobs."""
