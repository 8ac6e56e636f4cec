"""MkDocs hook: the API reference page, generated at build time from the OpenAPI document the
server serves (`percolert.web.openapi.openapi_document()`), so it cannot drift from the code.

`docs/api/reference.md` holds the page's introduction and the marker below; the hook replaces
the marker with the endpoints (method, path, summary, parameters, request body, responses) and
the component schemas (fields, types, defaults, constraints, descriptions).
"""

from __future__ import annotations

from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

from percolert.web.openapi import openapi_document

PAGE = "api/reference.md"
MARKER = "<!-- openapi-reference -->"

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
SCHEMA_PREFIX = "#/components/schemas/"

# JSON Schema keywords shown as constraints, with how each reads.
CONSTRAINTS = {
    "minLength": "at least {} character(s)",
    "maxLength": "at most {} character(s)",
    "minimum": "≥ {}",
    "exclusiveMinimum": "> {}",
    "maximum": "≤ {}",
    "exclusiveMaximum": "< {}",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
    "pattern": "matches `{}`",
}


def on_page_markdown(
    markdown: str, /, *, page: Page, config: MkDocsConfig, files: Files
) -> str | None:
    if page.file.src_uri != PAGE:
        return None
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} lacks the marker {MARKER} the API reference replaces")
    return markdown.replace(MARKER, render(openapi_document()))


def render(document: dict[str, Any]) -> str:
    """The reference as Markdown: one section per endpoint, then one per schema."""
    info = document.get("info", {})
    lines = [
        f"OpenAPI {document['openapi']}, {info.get('title', '')} {info.get('version', '')}.",
        "",
        "## Endpoints",
        "",
    ]
    operations = [
        (path, method, item[method])
        for path, item in document.get("paths", {}).items()
        for method in METHODS
        if method in item
    ]
    lines.extend(
        table(
            ["endpoint", "summary"],
            [
                [
                    f"[`{method.upper()} {path}`](#{operation_id(method, path)})",
                    operation.get("summary", ""),
                ]
                for path, method, operation in operations
            ],
        )
    )
    for path, method, operation in operations:
        lines.extend(render_operation(path, method, operation))
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    lines.extend(["## Schemas", ""])
    for name in sorted(schemas):
        lines.extend(render_schema(name, schemas[name]))
    return "\n".join(lines).rstrip("\n") + "\n"


def render_operation(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}` {{#{operation_id(method, path)}}}", ""]
    for key in ("summary", "description"):
        if operation.get(key):
            lines.extend([operation[key], ""])
    parameters: list[dict[str, Any]] = operation.get("parameters", [])
    if parameters:
        lines.extend(["Parameters:", ""])
        lines.extend(
            table(
                ["name", "in", "required", "type", "constraints", "description"],
                [
                    [
                        f"`{parameter['name']}`",
                        parameter["in"],
                        "yes" if parameter.get("required") else "no",
                        type_of(parameter.get("schema", {})),
                        constraints(parameter.get("schema", {})),
                        parameter.get("description", ""),
                    ]
                    for parameter in parameters
                ],
            )
        )
    body = operation.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        lines.extend([f"Request body ({required}): {content(body.get('content', {}))}", ""])
    lines.extend(["Responses:", ""])
    lines.extend(
        table(
            ["status", "meaning", "body"],
            [
                [status, response.get("description", ""), content(response.get("content", {}))]
                for status, response in operation.get("responses", {}).items()
            ],
        )
    )
    return lines


def render_schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### `{name}` {{#{schema_id(name)}}}", ""]
    if schema.get("description"):
        lines.extend([" ".join(schema["description"].split()), ""])
    properties: dict[str, Any] = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", []))
        lines.extend(
            table(
                ["field", "type", "required", "default", "constraints", "description"],
                [
                    [
                        f"`{field}`",
                        type_of(spec),
                        "yes" if field in required else "no",
                        f"`{json_text(spec['default'])}`" if "default" in spec else "",
                        constraints(spec),
                        spec.get("description", ""),
                    ]
                    for field, spec in properties.items()
                ],
            )
        )
    else:
        lines.extend([f"Type: {type_of(schema)}.", ""])
    if schema.get("additionalProperties") is False:
        lines.extend(["No other fields are accepted.", ""])
    return lines


def type_of(schema: dict[str, Any]) -> str:
    """A schema's type in a few words, schemas it refers to as links."""
    if "$ref" in schema:
        return schema_link(schema["$ref"])
    if "anyOf" in schema or "oneOf" in schema:
        options: list[dict[str, Any]] = schema.get("anyOf") or schema.get("oneOf") or []
        return " or ".join(type_of(option) for option in options)
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json_text(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json_text(schema['const'])}`"
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if isinstance(kind, list):
        return " or ".join(str(name) for name in kind)
    return str(kind) if kind else "any"


def constraints(schema: dict[str, Any]) -> str:
    """The constraints of a schema and of the options of an `anyOf`, in words."""
    found = [text.format(schema[key]) for key, text in CONSTRAINTS.items() if key in schema]
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        found.extend(text.format(option[key]) for key, text in CONSTRAINTS.items() if key in option)
    return ", ".join(found)


def content(media: dict[str, Any]) -> str:
    return "; ".join(
        f"{type_of(entry.get('schema', {}))} (`{media_type}`)"
        for media_type, entry in media.items()
    )


def schema_link(ref: str) -> str:
    name = ref.removeprefix(SCHEMA_PREFIX)
    return f"[`{name}`](#{schema_id(name)})"


def schema_id(name: str) -> str:
    return "schema-" + name.lower()


def operation_id(method: str, path: str) -> str:
    words = "".join(char if char.isalnum() else " " for char in path).split()
    return "-".join([method.lower(), *words])


def json_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, without the columns no row fills; then a blank line."""
    keep = [i for i in range(len(headers)) if any(row[i] for row in rows)]
    lines = [
        "| " + " | ".join(headers[i] for i in keep) + " |",
        "|" + "---|" * len(keep),
    ]
    lines.extend("| " + " | ".join(cell(row[i]) or "—" for i in keep) + " |" for row in rows)
    return [*lines, ""]


def cell(text: str) -> str:
    """Text for a table cell: on one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
