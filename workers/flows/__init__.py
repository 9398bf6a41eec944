"""The steps of each job kind, separate from the Celery task wrappers that call them."""
