"""Template substitution: only device.id, device.labels.<key> and fleet.name, never re-expanded."""

from __future__ import annotations

import random
import re

import pytest

from controller.api.templates import TemplateError, check_template, render

LABELS = {"site": "berlin", "model": "TS-100", "rack/slot": "r1.s2"}


def fill(template: str, labels: dict[str, str] = LABELS) -> str:
    return render(template, device_id="dev-1", labels=labels, fleet="sensors")


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ device.id }}", "dev-1"),
    ("{{device.id}}", "dev-1"),
    ("urn:acme:{{ fleet.name }}:{{ device.id }}", "urn:acme:sensors:dev-1"),
    ("{{ device.labels.site }}-{{ device.labels.model }}", "berlin-TS-100"),
    ("{{ device.labels.rack/slot }}", "r1.s2"),
    ("no fields at all", "no fields at all"),
    ("{ single braces } stay", "{ single braces } stay"),
])
def test_render(template: str, expected: str) -> None:
    check_template(template)
    assert fill(template) == expected


def test_missing_label_names_device_and_label() -> None:
    with pytest.raises(TemplateError, match=r"device 'dev-1' has no label 'room'"):
        fill("{{ device.labels.room }}")


@pytest.mark.parametrize("value", [
    "{{ device.id }}", "{{ fleet.name }}", "{{ device.labels.model }}", "\\1 \\g<0>",
])
def test_label_values_are_never_re_expanded(value: str) -> None:
    assert fill("[{{ device.labels.site }}]", {**LABELS, "site": value}) == f"[{value}]"


@pytest.mark.parametrize("template", [
    "{{ device.secret }}", "{{ device }}", "{{ device.labels }}", "{{ device.labels. }}",
    "{{ fleet.spec }}", "{{ __import__('os') }}", "{{ device.id | upper }}", "{{ }}",
    "{{ device.labels.x y }}",
])
def test_unknown_fields_are_refused(template: str) -> None:
    with pytest.raises(TemplateError, match="unknown template field"):
        check_template(template)


@pytest.mark.parametrize("template", [
    "{{ device.id }", "{{ device.id", "device.id }}", "{{ {{ device.id }} }}", "a }} b",
])
def test_unbalanced_braces_are_refused(template: str) -> None:
    with pytest.raises(TemplateError, match="unbalanced braces"):
        check_template(template)


def test_template_error_is_a_value_error() -> None:
    # pydantic validators turn ValueError into field problems; TemplateError must be one.
    assert issubclass(TemplateError, ValueError)


def test_render_substitutes_as_a_regular_expression_would() -> None:
    """Rendering splits each template once; over random templates it must equal substituting
    every `{{ field }}` match in turn (the oracle below)."""
    rng = random.Random(11)
    labels = {"site": "berlin", "a.b": "x}y", "empty": ""}
    fields = ["{{ device.id }}", "{{device.labels.site}}", "{{ fleet.name }}",
              "{{  device.labels.a.b }}", "{{ device.labels.empty }}"]
    literal = ["", "urn:", "{", "}", "-", "ü", " ", "{{", "x.example"]

    def oracle(template: str) -> str:
        values = {"device.id": "dev-7", "fleet.name": "sensors",
                  **{f"device.labels.{k}": v for k, v in labels.items()}}
        return re.sub(r"\{\{\s*([^{}]*?)\s*\}\}", lambda m: values.get(m.group(1), "?!"),
                      template)

    for _ in range(3000):
        template = "".join(rng.choice(rng.choice([fields, literal]))
                           for _ in range(rng.randint(0, 6)))
        expected = oracle(template)
        if "?!" in expected:  # an unknown field, e.g. `{{}}`
            with pytest.raises(TemplateError, match="unknown template field"):
                render(template, device_id="dev-7", labels=labels, fleet="sensors")
        else:
            assert render(template, device_id="dev-7", labels=labels, fleet="sensors") \
                == expected, template
