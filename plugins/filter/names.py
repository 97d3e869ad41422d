# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The naming rules of the collection for roles: the errors of a list of service definitions.

The documentation is in service_name_errors.yml beside this file.
"""

from __future__ import annotations

from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import definition_errors


def service_name_errors(services, field="services"):
    return definition_errors(services, field)


class FilterModule:
    def filters(self):
        return {"service_name_errors": service_name_errors}
