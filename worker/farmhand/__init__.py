"""farmhand: a container task worker.

The core (``farmhand.engine``) runs one task in a Docker container through
prepare, run, collect, cleanup and upload, and knows nothing about any
dispatcher: a CLI, Celery or anything else drives it with a task document and
gets a result document back.
"""

__version__ = "0.1.0"
