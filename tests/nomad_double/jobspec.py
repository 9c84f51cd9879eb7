"""``POST /v1/jobs/parse`` as the agent does it, for the Nomad double.

command/agent/job_endpoint.go (JobsParseRequest) calls
``jobspec2.ParseWithConfig`` with ``Path: "input.hcl"``, ``VarContent:
args.Variables``, ``AllowFS: false``, no ``ArgVars``, no ``Envs`` and
``Strict`` false. So, as here:

- the job is checked against the blocks and attributes Nomad knows
  (``schema.SCHEMA``, from the api structs' hcl tags): an unknown attribute is
  "Unsupported argument", an unknown block "Unsupported block type"
  (hcl's Body.Content, called by gohcl);
- ``Variables`` is one var file (HCL, or HCL's JSON when its first character
  other than a space is ``{``: jobspec2/parse.go isJSON); a variable it sets
  that the job does not declare is only a warning, dropped when nothing else
  fails (types.variables.go, ``undefSev`` without Strict); an attribute set
  twice is "Attribute redefined"; a ``variable`` block in it is an error;
- ``var.NAME`` references are replaced by the variable's value (the default
  unless Variables sets it); any other reference stays as ``${...}`` text
  (types.config.go's UndefinedVariable hook), for the client to interpolate;
- errors are diagnostics ``input.hcl:L,C-C: Summary; Detail`` (hcl's
  Diagnostic.Error), the first one plus ", and N other diagnostic(s)".

The result is an api.Job as JSON (api/jobs.go, api/tasks.go field names),
not canonicalized. It covers the fields our job uses; others are carried
over under their CamelCase names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import hcl2
import lark
from hcl2 import SerializationOptions
from hcl2.api import parses_to_tree

from .schema import SCHEMA

FILENAME: Final = "input.hcl"
_PLAIN: Final = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False, preserve_heredocs=False
)
# ${...} that is not $${...} (an escaped, literal "${").
_INTERPOLATION: Final = re.compile(r"(?<!\$)\$\{([^}]*)\}")
_VAR_REFERENCE: Final = re.compile(r"^\s*var\.([A-Za-z_][A-Za-z0-9_-]*)\s*$")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


class JobspecError(Exception):
    """What jobspec2 reports; the agent answers 400 ``Failed to parse job: <this>``."""


@dataclass(frozen=True)
class Diagnostic:
    line: int
    column: int
    end_column: int
    summary: str
    detail: str

    def __str__(self) -> str:
        return (
            f"{FILENAME}:{self.line},{self.column}-{self.end_column}: {self.summary}; {self.detail}"
        )


def _raise(diagnostics: list[Diagnostic], prefix: str = "") -> None:
    if not diagnostics:
        return
    first = f"{prefix}{diagnostics[0]}"
    if len(diagnostics) > 1:
        first += f", and {len(diagnostics) - 1} other diagnostic(s)"
    raise JobspecError(first)


def _tree(text: str) -> lark.Tree[Any]:
    try:
        return parses_to_tree(text)
    except (lark.exceptions.LarkError, ValueError) as err:
        line = getattr(err, "line", 1)
        column = getattr(err, "column", 1)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JobspecError(
            str(Diagnostic(line, column, column + 1, "Invalid expression", detail))
        ) from err


def _children(node: lark.Tree[Any], kind: str) -> list[lark.Tree[Any]]:
    return [child for child in node.children if isinstance(child, lark.Tree) and child.data == kind]


def _name(node: lark.Tree[Any]) -> str:
    return str(node.children[0].children[0])


def _where(node: lark.Tree[Any]) -> tuple[int, int, int]:
    identifier = node.children[0]
    meta = identifier.meta if isinstance(identifier, lark.Tree) else node.meta
    return meta.line, meta.column, meta.end_column


# --- the schema -------------------------------------------------------------------------


def check_schema(text: str, body: lark.Tree[Any], kind: str = "<root>") -> list[Diagnostic]:
    """Every attribute and block of ``body`` that ``SCHEMA[kind]`` does not allow."""
    schema = SCHEMA[kind]
    problems: list[Diagnostic] = []
    attributes = schema["attributes"]
    seen_attributes: set[str] = set()
    for attribute in _children(body, "attribute"):
        name = _name(attribute)
        line, column, end = _where(attribute)
        seen_attributes.add(name)
        block_form = schema["blocks"].get(name, {})
        if attributes == "*" or name in attributes or block_form.get("also_as_attribute"):
            continue
        problems.append(
            Diagnostic(
                line,
                column,
                end,
                "Unsupported argument",
                f'An argument named "{name}" is not expected here.',
            )
        )
    seen_blocks: dict[str, tuple[int, int, int]] = {}
    for block in _children(body, "block"):
        name = _name(block)
        line, column, end = _where(block)
        allowed = schema["blocks"].get(name)
        if allowed is None or attributes == "*":
            problems.append(
                Diagnostic(
                    line,
                    column,
                    end,
                    "Unsupported block type",
                    f'Blocks of type "{name}" are not expected here.',
                )
            )
            continue
        labels = [child for child in block.children[1:] if isinstance(child, lark.Tree)]
        labels = [label for label in labels if label.data != "body"]
        if len(labels) != len(allowed["labels"]):
            summary = (
                "Missing name for"
                if len(labels) < len(allowed["labels"])
                else "Extraneous label for"
            )
            problems.append(
                Diagnostic(
                    line,
                    column,
                    end,
                    f"{summary} {name}",
                    f"This block takes {len(allowed['labels'])} label(s).",
                )
            )
        if not allowed["multiple"]:
            if name in seen_blocks:
                first = seen_blocks[name]
                problems.append(
                    Diagnostic(
                        line,
                        column,
                        end,
                        f"Duplicate {name} block",
                        f"Only one {name} block is allowed. Another was defined at "
                        f"{FILENAME}:{first[0]},{first[1]}-{first[2]}.",
                    )
                )
            seen_blocks[name] = (line, column, end)
        if allowed["kind"] is not None:
            (inner,) = _children(block, "body")
            problems.extend(check_schema(text, inner, allowed["kind"]))
    for required in schema.get("required", []):
        if required not in seen_attributes:
            line, column = body.meta.line if body.children else 1, 1
            problems.append(
                Diagnostic(
                    line,
                    column,
                    column,
                    "Missing required argument",
                    f'The argument "{required}" is required, but no definition was found.',
                )
            )
    return problems


# --- variables --------------------------------------------------------------------------


def _variable_values(text: str) -> dict[str, Any]:
    """The var file's assignments (JobsParseRequest.Variables), checked as jobspec2 does."""
    if not text:
        return {}
    if text.lstrip(" ").startswith("{"):
        document = json.loads(text)
        if not isinstance(document, dict):
            raise JobspecError("unable to parse var content: not an object")
        return document
    (body,) = _children(_tree(text), "body")
    problems: list[Diagnostic] = []
    seen: dict[str, tuple[int, int, int]] = {}
    for attribute in _children(body, "attribute"):
        name = _name(attribute)
        where = _where(attribute)
        if name in seen:
            first = seen[name]
            problems.append(
                Diagnostic(
                    *where,
                    "Attribute redefined",
                    f'The argument "{name}" was already set at {FILENAME}:{first[0]},'
                    f"{first[1]}-{first[2]}. Each argument may be set only once.",
                )
            )
        seen[name] = where
    for block in _children(body, "block"):
        problems.append(
            Diagnostic(
                *_where(block),
                "Variable declaration in a .var file",
                "A .var file may only set variables, not declare them.",
            )
        )
    _raise(problems, "unable to parse var content: ")
    # hcl2's default keeps strings quoted, so that a string and a bare word differ.
    values: dict[str, Any] = hcl2.loads(text)
    values.pop("__comments__", None)
    return {name: _constant(name, value) for name, value in values.items()}


_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _constant(name: str, value: Any) -> Any:
    """A var file's value, evaluated as jobspec2 does it: with no EvalContext
    (types.variables.go), so no variable and no function call, only constants."""
    if isinstance(value, list):
        return [_constant(name, item) for item in value]
    if isinstance(value, dict):
        return {_constant(name, key): _constant(name, item) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    if value.startswith('"<<') and value.endswith('"'):
        body = value[1:-1].split("\n", 1)[1].rsplit("\n", 1)[0] + "\n"
        return _template_constant(name, body)
    if value.startswith('"') and value.endswith('"'):
        try:
            text = json.loads(value)
        except ValueError:
            text = value[1:-1]
        return _template_constant(name, text)
    whole = re.fullmatch(r"\$\{(.*)\}", value, re.S)
    expression = whole.group(1).strip() if whole else value
    if _NUMBER.fullmatch(expression):
        number = float(expression)
        return int(number) if number.is_integer() and "." not in expression else number
    return _not_constant(name, expression)


def _template_constant(name: str, text: str) -> str:
    if _INTERPOLATION.search(text):
        return str(_not_constant(name, _INTERPOLATION.search(text).group(1)))  # type: ignore[union-attr]
    return text.replace("$${", "${").replace("%%{", "%{")


def _not_constant(name: str, expression: str) -> Any:
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*\(", expression):
        summary, detail = "Function calls not allowed", "Functions may not be called here."
    else:
        summary, detail = "Variables not allowed", "Variables may not be used here."
    raise JobspecError(
        f"unable to parse var content: <nil>: {summary}; {detail} (in the value of {name})"
    )


def _declared(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = {}
    for entry in document.get("variable", []):
        ((name, body),) = entry.items()
        declared[name] = body
    return declared


def _to_type(name: str, value: Any, declared: str) -> Any:
    """cty's convert to a variable's type (types.variables.go: "Invalid value for variable")."""

    def refuse(required: str) -> JobspecError:
        return JobspecError(
            f"<nil>: Invalid value for variable; The value for {name} is not compatible with "
            f"the variable's type constraint: {required} required."
        )

    if declared in ("", "any"):
        return value
    if declared == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(int(value)) if float(value).is_integer() else repr(value)
        if isinstance(value, str):
            return value
        raise refuse("string")
    if declared == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            return float(value) if "." in value or "e" in value.lower() else int(value)
        raise refuse("a number")
    if declared == "bool":
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise refuse("bool")
    inner = re.fullmatch(r"(list|set|tuple|map|object)\((.*)\)", declared)
    if inner and inner.group(1) in ("list", "set", "tuple"):
        if not isinstance(value, list):
            raise refuse(f"list of {inner.group(2)}")
        return [_to_type(name, item, inner.group(2)) for item in value]
    if inner and inner.group(1) in ("map", "object"):
        if not isinstance(value, dict):
            raise refuse(f"map of {inner.group(2)}")
        return {key: _to_type(name, item, inner.group(2)) for key, item in value.items()}
    return value


def _resolve_variables(document: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    unset = []
    for name, body in _declared(document).items():
        if name in given:
            declared_type = str(body.get("type", "")).removeprefix("${").removesuffix("}")
            values[name] = _to_type(name, given[name], declared_type.replace(" ", ""))
        elif "default" in body:
            values[name] = body["default"]
        else:
            unset.append(name)
    if unset:
        raise JobspecError(
            f'<nil>: Unset variable "{unset[0]}"; A used variable must be set or have a default '
            "value; see https://developer.hashicorp.com/nomad/docs/reference/hcl2/variables  "
            "for details."
        )
    return values


def _no_such_variable(name: str) -> str:
    return f'<nil>: Unsupported attribute; This object does not have an attribute named "{name}".'


def _evaluate(value: Any, variables: Mapping[str, Any]) -> Any:
    """Replace var.NAME with its value; keep other references as ${...} text."""
    if isinstance(value, list):
        return [_evaluate(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: _evaluate(item, variables) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    whole = re.fullmatch(r"\$\{([^}]*)\}", value)
    if whole is not None and (reference := _VAR_REFERENCE.match(whole.group(1))):
        name = reference.group(1)
        if name not in variables:
            raise JobspecError(_no_such_variable(name))
        return variables[name]

    def substitute(match: re.Match[str]) -> str:
        reference = _VAR_REFERENCE.match(match.group(1))
        if reference is None:
            return match.group(0)  # NOMAD_ALLOC_ID, env.X...: the client interpolates them
        name = reference.group(1)
        if name not in variables:
            raise JobspecError(_no_such_variable(name))
        return str(variables[name])

    return _INTERPOLATION.sub(substitute, value).replace("$${", "${").replace("%%{", "%{")


# --- the api.Job JSON -------------------------------------------------------------------

# hcl name -> api.* JSON field, where it is not the name in CamelCase.
_FIELDS: Final[dict[str, dict[str, str]]] = {
    "job": {"id": "ID", "datacenters": "Datacenters", "group": "TaskGroups"},
    "group": {
        "task": "Tasks",
        "network": "Networks",
        "service": "Services",
        "volume": "Volumes",
        "restart": "RestartPolicy",
    },
    "task": {
        "template": "Templates",
        "identity": "Identities",
        "volume_mount": "VolumeMounts",
        "restart": "RestartPolicy",
        "service": "Services",
    },
    "template": {
        "destination": "DestPath",
        "data": "EmbeddedTmpl",
        "env": "Envvars",
        "error_on_missing_key": "ErrMissingKey",
    },
    "identity": {"aud": "Audience", "ttl": "TTL"},
    "resources": {
        "cpu": "CPU",
        "memory": "MemoryMB",
        "memory_max": "MemoryMaxMB",
        "disk": "DiskMB",
    },
    "service": {"port": "PortLabel", "check": "Checks"},
    "check": {"port": "PortLabel"},
    "network": {"mbits": "MBits"},
}
# Blocks whose body is a map of free keys (Env, Meta, the driver's Config).
_FREE_FORM: Final = frozenset({"env", "meta", "config"})


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def parse_duration(value: Any) -> int:
    """A Go duration ("30s", "1h30m") in nanoseconds; a number is nanoseconds already
    (jobspec2/hcl_conversions.go decodeDuration)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = str(value)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise JobspecError(f'<nil>: Unsuitable value type; time: invalid duration "{text}"')
    return int(sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts))


def _convert(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded block (hcl2's plain dict) as the api struct's JSON."""
    schema = SCHEMA.get(kind, {"attributes": {}, "blocks": {}})
    names = _FIELDS.get(kind.split(":", maxsplit=1)[0], {})
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key == "__comments__":
            continue
        field = names.get(key, _camel(key))
        block = schema["blocks"].get(key) if isinstance(schema["attributes"], dict) else None
        if block is None:
            attribute_type = (
                schema["attributes"].get(key) if isinstance(schema["attributes"], dict) else None
            )
            out[field] = parse_duration(value) if attribute_type == "duration" else value
            continue
        instances = value if isinstance(value, list) else [value]
        if key in _FREE_FORM:
            merged: dict[str, Any] = {}
            for instance in instances:
                merged.update(instance)
            out[field] = merged
            continue
        child_kind = block["kind"] or key
        converted = []
        for instance in instances:
            if block["labels"]:
                ((label, inner),) = instance.items()
                item = _convert(child_kind, inner)
                item["Name" if key != "port" else "Label"] = label
            else:
                item = _convert(child_kind, instance)
            converted.append(item)
        if key == "volume":
            out[field] = {item["Name"]: item for item in converted}
        elif key == "port":
            continue  # folded into the network below
        elif block["multiple"]:
            out[field] = converted
        else:
            out[field] = converted[-1]
    if kind == "network":
        ports = [
            _convert("port", inner) | {"Label": label}
            for entry in body.get("port", [])
            for label, inner in entry.items()
        ]
        reserved = [
            {"Label": p["Label"], "Value": p.get("Static", 0), "To": p.get("To", 0)}
            for p in ports
            if "Static" in p
        ]
        dynamic = [
            {"Label": p["Label"], "Value": 0, "To": p.get("To", 0)}
            for p in ports
            if "Static" not in p
        ]
        if reserved:
            out["ReservedPorts"] = reserved
        if dynamic:
            out["DynamicPorts"] = dynamic
    return out


def parse_job(hcl: str, variables: str = "") -> dict[str, Any]:
    """The api.Job that /v1/jobs/parse returns for ``hcl``; JobspecError as Nomad refuses."""
    if hcl == "":
        raise JobspecError("Job spec is empty")
    tree = _tree(hcl)
    (body,) = _children(tree, "body")
    _raise(check_schema(hcl, body))
    jobs = [block for block in _children(body, "block") if _name(block) == "job"]
    if not jobs:
        raise JobspecError(f"{FILENAME}: Missing job block; A job block is required")
    document = hcl2.loads(hcl, serialization_options=_PLAIN)
    given = _variable_values(variables)
    values = _resolve_variables(document, given)
    ((job_id, job_body),) = document["job"][0].items()
    job = _convert("job", _evaluate(job_body, values))
    job["ID"] = job.get("ID", job_id)
    job["Name"] = job.get("Name", job_id)
    return job
