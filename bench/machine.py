"""What every benchmark reports about the machine it ran on, so figures from different runs can be compared."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Cores, platform, Python, and the load average before (``os.getloadavg()`` at start) and now."""
    return {
        'cpu_count': os.cpu_count(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'load_average_before': [round(x, 2) for x in load_before],
        'load_average_after': [round(x, 2) for x in os.getloadavg()],
    }
