"""Thin Celery task wrappers, one module per job kind."""
