"""Benchmarks of Kiln against bare FastAPI + Celery anchors; see bench/RESULTS.md."""
