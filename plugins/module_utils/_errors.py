# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type Skynet's code raises; modules turn it into fail_json once."""

from __future__ import annotations


class SkynetError(Exception):
    """A failure with a message fit for the operator: it names the component and the problem."""
