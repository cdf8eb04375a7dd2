"""Subject/SAN/extension templates: `{{ device.id }}`, `{{ device.labels.x }}`, `{{ fleet.name }}`.

Deliberately not a general template engine: only field substitution, so a device label can
never execute code or reach other data. Rendered values are checked by the caller.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

_FIELD = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"^(device\.id|fleet\.name|device\.labels\.[A-Za-z0-9_.\-/]+)$")


class TemplateError(ValueError):
    """A template refers to something that does not exist or is not allowed."""


def check_template(template: str) -> None:
    """Raise TemplateError if the template uses anything but the allowed fields."""
    stripped = _FIELD.sub("", template)
    if "{{" in stripped or "}}" in stripped:
        raise TemplateError(f"unbalanced braces in template {template!r}")
    if any(token in stripped for token in ("{%", "%}", "{#", "#}")):
        raise TemplateError(f"template {template!r} uses {{% %}} or {{# #}}: only {{{{ field }}}} "
                            "substitution is supported")
    for expression in _FIELD.findall(template):
        if not _PATH.match(expression):
            raise TemplateError(
                f"unknown template field {{{{ {expression} }}}}: allowed are device.id, "
                "device.labels.<key> and fleet.name"
            )


def render(template: str, *, device_id: str, labels: Mapping[str, str], fleet: str) -> str:
    """Substitute fields; a missing label is an error naming the label."""
    pieces = _pieces(template)
    if len(pieces) == 1:
        return template
    text = list(pieces)
    for index in range(1, len(pieces), 2):
        expression = pieces[index]
        if expression == "device.id":
            text[index] = device_id
        elif expression == "fleet.name":
            text[index] = fleet
        elif expression.startswith("device.labels."):
            key = expression.removeprefix("device.labels.")
            if key not in labels:
                raise TemplateError(f"device {device_id!r} has no label {key!r}")
            text[index] = labels[key]
        else:
            raise TemplateError(f"unknown template field {expression!r}")
    return "".join(text)


@functools.lru_cache(maxsize=1024)
def _pieces(template: str) -> tuple[str, ...]:
    """Literal text at even positions, field expressions at odd ones (split once per
    template: rendering runs for every device)."""
    return tuple(_FIELD.split(template))
