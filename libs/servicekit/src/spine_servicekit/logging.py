"""Moved to :mod:`spine_kafka.logging`, which agents share without servicekit.

This name stays for the services: it *is* that module (module state such as
``tracing.ENABLED`` and monkeypatched names are shared), the star import only tells
type checkers what it holds.
"""

from __future__ import annotations

import sys

from spine_kafka import logging as _moved
from spine_kafka.logging import *  # noqa: F403

sys.modules[__name__] = _moved
