"""Jobs: persistent records run by an executor, one worker process per job.

The pieces: ``registry`` (job type -> handler import path), ``resources`` (what a job needs and
what the machine has), ``state`` (status transitions in the store, shared by executor, worker and
services), ``context`` (what a handler gets), ``worker`` (``python -m onebox.jobs.worker <id>``,
the one entrypoint every executor starts), ``executor`` (the local executor) and ``builtin``
(the ``sleep`` test job). Nothing here imports services, the CLI or FastAPI at module level.
"""
