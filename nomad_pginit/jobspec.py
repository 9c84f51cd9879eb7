"""A job file's input variables, as ``nomad job run`` reads them on the operator's machine.

``POST /v1/jobs/parse`` evaluates a job with the variables it is sent (its
``Variables`` field, the text of one var file) and nothing else: the server
reads no var file and no environment (command/agent/job_endpoint.go,
jobsParseRequest: ``VarContent: args.Variables``, no ``Envs``). ``nomad job
run`` reads them locally instead (command/job_run.go, jobspec2/parse.go,
jobspec2/types.variables.go). This module does that reading, so that deploy
sends the parse endpoint one var-file text holding what ``nomad job run
-var-file ... -var ...`` would have used, and registers the job with the
submission record ``nomad job run`` sends:

- precedence, lowest first: the variable's default < ``NOMAD_VAR_<name>`` <
  each ``--var-file`` in order < each ``--var`` in order (types.variables.go
  collects them in that order and takes the last);
- values from ``--var`` and ``NOMAD_VAR_`` are literal strings for a variable
  typed ``string`` or ``number`` or untyped, HCL expressions for the others
  (types.variables.go, the ``cty.String, cty.Number, cty.NilType`` case);
- a ``--var-file`` or ``--var`` naming a variable the job does not declare is
  an error, as with ``nomad job run``'s default ``-hcl2-strict``; an undeclared
  ``NOMAD_VAR_`` is ignored.

The only module that imports python-hcl2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import lark
from hcl2.api import parses_to_tree

from nomad_pginit.errors import ConfigError

ENV_PREFIX: Final = "NOMAD_VAR_"
# The name a -var value is parsed under, to check that it is one expression.
_PROBE: Final = "nomad_pginit_value"
# The types whose -var and NOMAD_VAR_ values Nomad takes as literal text.
_LITERAL_TYPES: Final = frozenset({"string", "number", None})
# The types Nomad's submission record keeps as flags rather than as var-file text.
_SIMPLE_TYPES: Final = frozenset({"string", "number", "bool", None})


@dataclass(frozen=True)
class Declared:
    """A ``variable "name" { ... }`` block of the job file."""

    name: str
    # "string", "list(string)", ...; for an untyped variable with a default, the
    # default's type as Nomad infers it ("string", "number", "bool", "complex");
    # None when neither is given (Nomad's cty.NilType).
    type: str | None


@dataclass(frozen=True)
class Assignment:
    """One variable's value as HCL expression text, and where it came from."""

    name: str
    expression: str
    origin: str  # "--var-file PATH", "--var", "$NOMAD_VAR_name"


@dataclass(frozen=True)
class JobVariables:
    """What deploy sends: the parse endpoint's Variables, and the submission record."""

    # One var-file text, each variable once: the value of highest precedence.
    text: str = ""
    assignments: tuple[Assignment, ...] = ()
    # JobSubmission.VariableFlags and .Variables, as `nomad job run` fills them in.
    submission_flags: Mapping[str, str] = field(default_factory=dict)
    submission_variables: str = ""

    def describe(self) -> str:
        """For the log: which variables are set, and from where (never their values)."""
        return ", ".join(f"{item.name} ({item.origin})" for item in self.assignments)


def _tree(text: str, source: str) -> lark.Tree[Any]:
    try:
        return parses_to_tree(text)
    except (lark.exceptions.LarkError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{source} is not valid HCL: {first}") from err


def _children(node: lark.Tree[Any], kind: str) -> list[lark.Tree[Any]]:
    return [child for child in node.children if isinstance(child, lark.Tree) and child.data == kind]


def _text(source_text: str, node: lark.Tree[Any]) -> str:
    return source_text[node.meta.start_pos : node.meta.end_pos]


def _identifier(node: lark.Tree[Any]) -> str:
    return str(node.children[0])


def _unquote(label: str) -> str:
    """A block label's string literal, as HCL reads it (labels are JSON-compatible)."""
    try:
        value = json.loads(label)
    except ValueError:
        return label.strip('"')
    return value if isinstance(value, str) else label


def _attributes(text: str, body: lark.Tree[Any]) -> list[tuple[str, str]]:
    """(name, expression text) of each attribute directly in ``body``."""
    found = []
    for attribute in _children(body, "attribute"):
        expression = attribute.children[-1]
        assert isinstance(expression, lark.Tree)
        found.append((_identifier(attribute.children[0]), _text(text, expression).strip()))
    return found


def declared_variables(job_hcl: str, source: str) -> dict[str, Declared]:
    """The ``variable`` blocks of a job file, by name."""
    (body,) = _children(_tree(job_hcl, source), "body")
    declared: dict[str, Declared] = {}
    for block in _children(body, "block"):
        if _identifier(block.children[0]) != "variable":
            continue
        labels = [child for child in block.children[1:] if isinstance(child, lark.Tree)]
        name = _unquote(_text(job_hcl, labels[0]))
        (block_body,) = _children(block, "body")
        settings = dict(_attributes(job_hcl, block_body))
        declared[name] = Declared(name, _type_of(settings))
    return declared


def _type_of(settings: Mapping[str, str]) -> str | None:
    declared = settings.get("type")
    if declared is not None:
        return "".join(declared.split())
    default = settings.get("default")
    if default is None:
        return None
    # jobspec2 types an untyped variable by its default (types.variables.go).
    if default.startswith(('"', "<<")):
        return "string"
    if default in ("true", "false"):
        return "bool"
    if default[:1].isdigit() or default[:1] == "-":
        return "number"
    return "complex"


def read_var_file(path: Path) -> list[Assignment]:
    """The assignments of one var file: HCL, or HCL's JSON when it starts with ``{``."""
    origin = f"--var-file {path}"
    where = f"{path} (--var-file)"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the var file {path} (--var-file): {err}") from err
    # jobspec2/parse.go isJSON: the first character that is not a space.
    if text.lstrip(" ").startswith("{"):
        try:
            document = json.loads(text, object_pairs_hook=_no_duplicates(where))
        except ValueError as err:
            raise ConfigError(f"{where} is not valid JSON: {err}") from err
        if not isinstance(document, dict):
            raise ConfigError(f"{where} must be a JSON object of variables")
        return [
            Assignment(str(name), _hcl_literal(value), origin) for name, value in document.items()
        ]
    (body,) = _children(_tree(text, where), "body")
    if blocks := _children(body, "block"):
        kind = _identifier(blocks[0].children[0])
        raise ConfigError(
            f"{where} may only set variables (name = value), not declare a {kind} block"
        )
    assignments = [
        Assignment(name, expression, origin) for name, expression in _attributes(text, body)
    ]
    _refuse_duplicates([item.name for item in assignments], where)
    return assignments


def _refuse_duplicates(names: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            # hclsyntax's "Attribute redefined": nomad job run refuses the file.
            raise ConfigError(f'{where} sets "{name}" twice: each variable may be set only once')
        seen.add(name)


def _no_duplicates(where: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        _refuse_duplicates([name for name, _ in items], where)
        return dict(items)

    return pairs


def _hcl_literal(value: object) -> str:
    """A JSON value as HCL expression text that means the same literal value."""
    if isinstance(value, str):
        # JSON strings in a var file are literal: no ${...} interpolation in them.
        return json.dumps(value).replace("${", "$${").replace("%{", "%%{")
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_hcl_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_hcl_literal(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise ConfigError(f"unsupported JSON value {value!r} in a var file")


def _flag_expression(declared: Declared, value: str, origin: str) -> str:
    """How nomad job run reads a -var or NOMAD_VAR_ value for this variable: literal
    text, or one HCL expression (hclsyntax.ParseExpression: nothing after it)."""
    if declared.type in _LITERAL_TYPES:
        return _hcl_literal(value)
    probe = f"{_PROBE} = {value}\n"
    try:
        (body,) = _children(parses_to_tree(probe), "body")
    except (lark.exceptions.LarkError, ValueError) as err:
        raise ConfigError(
            f"{origin} {declared.name} is a {declared.type}: its value must be one HCL "
            f'expression, such as ["dc1"] for a list, not {value!r}'
        ) from err
    if [name for name, _ in _attributes(probe, body)] != [_PROBE] or _children(body, "block"):
        raise ConfigError(
            f"{origin} {declared.name}: its value must be one HCL expression and nothing "
            "after it (nomad job run says: Extra characters after expression)"
        )
    return value


def _split_var(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise ConfigError(f"--var must be NAME=VALUE, as nomad job run -var takes it, not {raw!r}")
    return name, value


def compose(
    job_hcl: str,
    source: str,
    var_files: Sequence[Path],
    var_args: Sequence[str],
    environ: Mapping[str, str],
) -> JobVariables:
    """The variables ``nomad job run`` would use for this job; ConfigError when it would refuse."""
    declared = declared_variables(job_hcl, source)
    chosen: dict[str, Assignment] = {}
    problems: list[str] = []
    env_values = {
        key[len(ENV_PREFIX) :]: value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX)
    }
    for name, value in env_values.items():
        if name in declared:  # undeclared ones are skipped, as nomad job run skips them
            origin = f"${ENV_PREFIX}{name}"
            chosen[name] = Assignment(name, _flag_expression(declared[name], value, origin), origin)
    file_texts: list[str] = []
    for path in var_files:
        for assignment in read_var_file(path):
            if assignment.name not in declared:
                problems.append(
                    f'{path} (--var-file) sets "{assignment.name}", which {source} does not declare'
                )
                continue
            chosen[assignment.name] = assignment
        file_texts.append(path.read_text(encoding="utf-8"))
    flags: dict[str, str] = {}
    for raw in var_args:
        name, value = _split_var(raw)
        flags[name] = value
        if name not in declared:
            problems.append(f'--var "{name}": {source} declares no such variable')
            continue
        chosen[name] = Assignment(name, _flag_expression(declared[name], value, "--var"), "--var")
    if problems:
        known = ", ".join(sorted(declared)) or "none"
        raise ConfigError(
            f"undeclared job variables (nothing was submitted; the job declares: {known})",
            problems,
        )
    text = "".join(f"{item.name} = {item.expression}\n" for item in chosen.values())
    simple, complex_lines = _submission_flags({**env_values, **flags}, declared)
    record = "".join(f"{content}\n" for content in file_texts)
    if record and complex_lines:
        record = record.rstrip("\n") + "\n\n" + complex_lines
    elif complex_lines:
        record = complex_lines
    return JobVariables(
        text=text,
        assignments=tuple(chosen.values()),
        submission_flags=simple,
        submission_variables=record,
    )


def _submission_flags(
    values: Mapping[str, str], declared: Mapping[str, Declared]
) -> tuple[dict[str, str], str]:
    """jobspec2/parse.go separateVariables: simple values as flags, complex ones as HCL."""
    simple: dict[str, str] = {}
    complex_lines: list[str] = []
    for name in sorted(values):
        variable = declared.get(name)
        if variable is None or variable.type in _SIMPLE_TYPES:
            simple[name] = values[name]
        else:
            complex_lines.append(f"{name} = {values[name]}")
    return simple, "\n".join(complex_lines)
