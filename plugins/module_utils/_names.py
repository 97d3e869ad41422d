# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one set of rules for the names Skynet puts into Consul, Docker, HAProxy and file paths.

Each check returns the value when it is valid and raises SkynetError naming the field and the rule
otherwise. Only the standard library is used: modules, plugins, the registrator and the role
filters share these checks.
"""

from __future__ import annotations

import re

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

COLORS = ("blue", "green")

# A DNS label: HAProxy finds instances as _NAME._COLOR.service.consul, KV keys and container labels
# carry the name, and with no underscore NAME_blue or NAME_preview is never another service's name.
SERVICE_NAME_RULE = "use 1-63 lower-case letters, digits and dashes, starting with a letter and not ending with a dash"
_SERVICE_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")

TAG_MAX = 128
TAG_RULE = (
    f"use 1-{TAG_MAX} letters, digits, dashes, dots, underscores and equals signs, starting with a letter or "
    "a digit, and not a color (blue, green: Skynet sets the color tag itself)"
)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")

KV_SEGMENT_MAX = 128
KV_SEGMENT_RULE = (
    f"each part between slashes must be 1-{KV_SEGMENT_MAX} letters, digits, dashes, dots and underscores, "
    "and not . or .."
)
_KV_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

RUNTIME_WORD_RULE = "it must be one word, without spaces, newlines, semicolons, backslashes or control characters"
_RUNTIME_FORBIDDEN = re.compile(r"[\s;\\\x00-\x1f\x7f]")


def _quoted(value):
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _invalid(field, value, what, rule):
    return SkynetError(f"{field} {_quoted(value)} is not a valid {what}: {rule}")


def service_name(value, field="service"):
    if not isinstance(value, str) or not _SERVICE_NAME.fullmatch(value):
        raise _invalid(field, value, "service name", SERVICE_NAME_RULE)
    return value


def color(value, field="color"):
    if value not in COLORS:
        raise _invalid(field, value, "color", "use blue or green")
    return value


def tag(value, field="tag"):
    if not isinstance(value, str) or len(value) > TAG_MAX or not _TAG.fullmatch(value) or value in COLORS:
        raise _invalid(field, value, "tag", TAG_RULE)
    return value


def tags(values, field="tags"):
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise SkynetError(f"{field} must be a list of tags, not {_quoted(values)}")
    return tuple(tag(v, f"{field}[{n}]") for n, v in enumerate(values))


def kv_segment(value, field="key"):
    if (
        not isinstance(value, str)
        or len(value) > KV_SEGMENT_MAX
        or not _KV_SEGMENT.fullmatch(value)
        or value in (".", "..")
    ):
        raise _invalid(field, value, "Consul KV key part", KV_SEGMENT_RULE)
    return value


def kv_key(value, field="key"):
    """A KV key (or prefix) whose every slash-separated part is a valid segment: no empty, `.` or `..` part."""
    if not isinstance(value, str) or not value:
        raise _invalid(field, value, "Consul KV key", KV_SEGMENT_RULE)
    for segment in value.split("/"):
        try:
            kv_segment(segment)
        except SkynetError as e:
            raise _invalid(field, value, "Consul KV key", KV_SEGMENT_RULE) from e
    return value


def runtime_word(value, field="argument"):
    """One argument of an HAProxy runtime API command (a map path, key or value, a server name)."""
    if not isinstance(value, str) or not value or _RUNTIME_FORBIDDEN.search(value):
        raise SkynetError(f"{field} {_quoted(value)} cannot be sent to HAProxy's runtime API: {RUNTIME_WORD_RULE}")
    return value


def problem(check, value, field):
    """The message of check(value, field), None when the value is valid: for collecting every error at once."""
    try:
        check(value, field)
    except SkynetError as e:
        return str(e)
    return None


def definition_errors(definitions, field="services"):
    """The messages for every invalid name, color or tag of a list of service definitions (duplicates too)."""
    if isinstance(definitions, (str, dict)) or not isinstance(definitions, (list, tuple)):
        return [f"{field} must be a list of service definitions, not {_quoted(definitions)}"]
    errors, seen = [], set()
    for n, definition in enumerate(definitions):
        where = f"{field}[{n}]"
        if not isinstance(definition, dict):
            errors.append(f"{where} is not a mapping")
            continue
        name = definition.get("name")
        message = problem(service_name, name, f"{where}.name")
        if message:
            errors.append(message)
        elif name in seen:
            errors.append(f"{where}.name {name!r} is defined more than once")
        seen.add(name if isinstance(name, str) else None)
        if definition.get("color") is not None:
            errors.append(problem(color, definition["color"], f"{where}.color"))
        if definition.get("tags") is not None:
            errors.append(problem(tags, definition["tags"], f"{where}.tags"))
    return [e for e in errors if e]


def split_host_port(text):
    """(host, port) of HOST:PORT, [IPv6]:PORT or :PORT (host ""), None when it is not one: the one parser of them."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)
