"""Peak resident memory of this process, for the benchmark drivers.

``VmHWM`` from ``/proc/self/status``: the high-water mark of the current address
space, which starts afresh at ``exec``. Not ``ru_maxrss`` (``getrusage``, or the
parent's ``os.wait4``): Linux carries that value across ``fork`` + ``exec``, so
a child started by a parent that has grown to 2 GB reports at least 2 GB
whatever it does itself.
"""

from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort
