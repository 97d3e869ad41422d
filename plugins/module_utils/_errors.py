# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exception type Skynet's code raises, and the kinds of it callers act on; modules turn it into fail_json once."""

from __future__ import annotations


class SkynetError(Exception):
    """A failure with a message fit for the operator: it names the component and the problem."""


class HostUnavailable(SkynetError):
    """One host of a compute cannot take the call now (a Docker API that does not answer, an EC2 subnet with no
    capacity or address left): a pool marks it down and tries another."""


class ImageMissing(SkynetError):
    """The image is not on a host's engine: the user's to fix on every host, not a host failure."""
