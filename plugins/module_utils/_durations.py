# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durations as the tools write them ("1h30m", "500ms"), in seconds. Pure: standard library only."""

from __future__ import annotations

import re

PROMETHEUS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
GO = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}  # Consul's


def seconds(text, units):
    """Seconds of text, a sequence of number-unit pieces with the units given; None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    # Longest units first, so that "ms" is not read as "m".
    names = "|".join(sorted(map(re.escape, units), key=len, reverse=True))
    pattern = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(" + names + ")")
    pieces = pattern.findall(text)
    if not pieces or "".join(n + u for n, u in pieces) != text:
        return None
    return sum(float(n) * units[u] for n, u in pieces)
