"""``uvicorn preempt.api.main:app``: the API configured from ``PREEMPT_*`` environment variables."""

from preempt.api.app import create_app

app = create_app()
