"""Asking for a fresh process: :class:`NodeNeedsRestartError` and the exit codes ``run()``/``serve()`` return.

Some failures only a new process fixes: a wedged CUDA context, ``No CUDA GPUs are available`` after a driver
reset, a library that leaks until the process ends. A detector's ``build`` or ``evaluate``/``batch_evaluate``,
a trainer stage, an annotator's tool, a converter's ``convert`` or any node hook raises :class:`NodeNeedsRestartError` (the reference's name); the node then stops
cleanly (the trainer's checkpoint keeps the stage, so the new process redoes it) and ``run()``/``serve()``
return :data:`EXIT_NEEDS_RESTART`. The reference calls ``sys.exit(0)`` instead, which only a container policy
that restarts on success too (``always``, ``unless-stopped``) acts on; a non-zero code is also acted on by
Docker's ``on-failure``, systemd's ``Restart=on-failure`` and Kubernetes.
"""

from __future__ import annotations

#: ``run()``/``serve()``: the node stopped on SIGINT/SIGTERM, ``stop()``, or a restart wish with code 0 (the
#: Loop's ``restart`` event, ``RESTART_AFTER_TRAINING``, ``TRAINER_IDLE_TIMEOUT_SEC``).
EXIT_OK = 0

#: ``run()``/``serve()``: a second SIGINT/SIGTERM forced the shutdown without waiting for threads.
EXIT_FORCED = 1

#: ``run()``/``serve()``: a :class:`NodeNeedsRestartError` was raised; start a fresh process. 75 is
#: ``EX_TEMPFAIL`` of sysexits.h ("temporary failure, the user is invited to retry").
EXIT_NEEDS_RESTART = 75


class NodeNeedsRestartError(Exception):
    """Raised by a logic or node hook when only a fresh process can go on (e.g. the GPU is gone or wedged).

    The node stops cleanly and ``run()``/``serve()`` return :data:`EXIT_NEEDS_RESTART`; a supervisor (a
    container restart policy, systemd) starts it again.
    """
