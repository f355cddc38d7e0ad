"""``farmhand.client`` as users import it: the Celery client lives in ``farmhand.dispatch.client``.

    from farmhand.client import Client
    handle = Client().submit(task, queue="small")
"""

from farmhand.dispatch.client import Client, TaskHandle, submit

__all__ = ["Client", "TaskHandle", "submit"]
