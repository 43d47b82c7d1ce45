"""Work around a LiteLLM start-up hang under ``--run_gunicorn`` (put on the proxy's PYTHONPATH).

The gunicorn master starts LiteLLM's query-engine reaper thread and then forks the workers. The
reaper's first scan opens files with ``encoding="ascii"``, which imports ``encodings.ascii``; a
worker forked during that import inherits the module's import lock held by a thread that does
not exist in the child, and hangs for good the first time it needs the codec (apscheduler's
``tzlocal`` reads /etc/timezone in the proxy's startup). Importing the codec before any thread
starts closes the window. Seen with LiteLLM 1.110.2, with or without our callback.
"""

import encodings.ascii  # noqa: F401
