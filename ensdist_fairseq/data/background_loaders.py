"""Stop fairseq's batch-prefetching threads before the interpreter shuts down.

With --data-buffer-size > 0 (fairseq-train's default) every epoch iterator reads its batches in
a daemon thread (fairseq.data.iterators.BackgroundConsumer) that runs ahead of training. When
--max-update ends a run inside an epoch, that thread is still loading batches (collating, reading
the teacher store) as the process exits; a daemon thread caught inside torch's C++ code by the
interpreter's shutdown is unwound by force, and the process dies with SIGABRT ("terminate called
without an active exception") after training finished. `stop_at_exit()` registers an atexit
handler (atexit runs before the daemon threads are frozen) that lets each such thread finish the
batch it is on and leave its loop, draining its queue so that it never blocks, and joins it.
"""

import atexit
import logging
import queue
import threading
import time

from fairseq.data.iterators import BackgroundConsumer

logger = logging.getLogger(__name__)

_registered = False


def stop_background_consumers(timeout: float = 120.0) -> int:
    """Stop every live BackgroundConsumer thread; returns how many were stopped."""
    consumers = [
        t for t in threading.enumerate() if isinstance(t, BackgroundConsumer) and t.is_alive()
    ]
    deadline = time.monotonic() + timeout
    for t in consumers:
        # its loop breaks after the next batch once count >= _max_len, then puts a sentinel
        t._max_len = 0
        while t.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    t._queue.get_nowait()
            except queue.Empty:
                pass
            t.join(0.01)
        if t.is_alive():
            logger.warning(f"a batch-loading thread did not stop within {timeout:.0f} s")
    return len(consumers)


def stop_at_exit() -> None:
    """Register stop_background_consumers to run at interpreter exit (once per process)."""
    global _registered
    if not _registered:
        atexit.register(stop_background_consumers)
        _registered = True
