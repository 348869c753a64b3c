"""Thin Celery tasks: each wraps one named action in the web app."""
