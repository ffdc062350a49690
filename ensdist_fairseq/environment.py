"""Where a result was measured: the machine and the software, recorded in every result file.

Float results of training and decoding depend on the processor and the library builds (the same
command follows another trajectory elsewhere), so a number is reported with the machine it came
from (the report's "Measured on" line).
"""

import datetime
import os
import platform
from typing import Optional

import numpy as np
import torch


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe(device: Optional[torch.device] = None) -> dict:
    """The environment of a measurement: processor, cores, accelerator, library versions, date
    (UTC). device: where the models ran (a CUDA device is named)."""
    accelerator = None
    if device is not None and torch.device(device).type == "cuda":
        accelerator = torch.cuda.get_device_name(torch.device(device))
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "accelerator": accelerator,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
    }


def summary(env: dict) -> str:
    """One line for a report: 'AMD EPYC (2 cores), torch 2.13.0+cpu, Python 3.11.2'."""
    where = env.get("accelerator") or f"{env.get('cpu', 'unknown')} ({env.get('cpu_count')} cores)"
    return (
        f"{where}, torch {env.get('torch')}, numpy {env.get('numpy')}, Python {env.get('python')}"
    )
