"""Indexed species in model files: ``for`` ranges, ``{n±k}`` placeholders and ``sum{n=a..b}(...)``.

A table (compartment, flow, derived quantity, output) may carry ``for = {n = "0..8"}``; it is then
written out once per value of ``n``, with every ``{...}`` in its name and text fields replaced by
the value of the integer expression inside the braces (``{n}``, ``{n-1}``, ``{2*n}``).  Any
expression may contain ``sum{n=1..8}(TERM)``, which becomes ``(TERM_1 + ... + TERM_8)``.  Both are
pure text substitutions done before parsing; index arithmetic is read by its own tiny ``ast`` walk
(integers, index names, ``+ - *``), never evaluated.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from .errors import ModelFileError

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SUM = re.compile(r"sum\{\s*([A-Za-z]\w*)\s*=\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*\}\s*\(")
MAX_RANGE = 1000


def _index_value(text: str, env: dict[str, int], where: str) -> int:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ModelFileError(
            f"cannot read index expression {{{text}}}; write e.g. {{n}} or {{n-1}}"
        ) from None

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int)
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                here = ", ".join(env) or 'none (add for = {n = "0..8"})'
                raise ModelFileError(
                    f"index {{{text}}} uses '{node.id}', which is not an index of this table; indices here: {here}"
                )
            return env[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            a, b = walk(node.left), walk(node.right)
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ModelFileError(f"index expression {{{text}}} may only use integers, indices and + - *")

    return walk(tree)


def expand_sums(text: str, env: dict[str, int] | None = None) -> str:
    """Replace every ``sum{i=a..b}(TERM)`` in ``text`` by the written-out sum.

    Examples
    --------
    >>> expand_sums("sum{n=1..3}(n*A{n})")
    '((1)*A1 + (2)*A2 + (3)*A3)'
    """
    env = dict(env or {})
    while True:
        m = _SUM.search(text)
        if not m:
            return text
        var, lo, hi = m.group(1), int(m.group(2)), int(m.group(3))
        if hi < lo or hi - lo > MAX_RANGE:
            raise ModelFileError(f"sum range {lo}..{hi} must be increasing and at most {MAX_RANGE} long")
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        if depth:
            raise ModelFileError(f"unbalanced parentheses after sum{{...}} in {text!r}")
        body = text[m.end() : i - 1]
        terms = []
        for k in range(lo, hi + 1):
            inner = dict(env, **{var: k})
            term = expand_sums(body, inner)
            term = re.sub(rf"\b{var}\b(?![^{{]*\}})", f"({k})", term)
            terms.append(substitute(term, inner))
        text = text[: m.start()] + "(" + " + ".join(terms) + ")" + text[i:]


def substitute(text: str, env: dict[str, int]) -> str:
    """Replace ``{index expression}`` placeholders in ``text``."""
    return _PLACEHOLDER.sub(lambda m: str(_index_value(m.group(1), env, text)), text)


def parse_range(spec: Any, where: str) -> range:
    if not isinstance(spec, str) or not _RANGE.match(spec):
        raise ModelFileError(f'an index range must be text like "0..8", got {spec!r}', key=where)
    m = _RANGE.match(spec)
    lo, hi = int(m.group(1)), int(m.group(2))  # type: ignore[union-attr]
    if hi < lo or hi - lo > MAX_RANGE:
        raise ModelFileError(
            f"index range {spec!r} must be increasing and at most {MAX_RANGE} long", key=where
        )
    return range(lo, hi + 1)


def _fill(value: Any, env: dict[str, int]) -> Any:
    if isinstance(value, str):
        return substitute(expand_sums(value, env), env)
    if isinstance(value, dict):
        return {_fill(k, env): _fill(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, env) for v in value]
    return value


def _environments(spec: Any, where: str) -> list[dict[str, int]]:
    if not isinstance(spec, dict) or not spec:
        raise ModelFileError("'for' must be a table of index ranges, e.g. for = {n = \"0..8\"}", key=where)
    envs: list[dict[str, int]] = [{}]
    for var, rng in spec.items():
        if not re.fullmatch(r"[A-Za-z]\w*", var):
            raise ModelFileError(f"index name {var!r} must be an identifier", key=where)
        envs = [dict(e, **{var: k}) for e in envs for k in parse_range(rng, f"{where}.for.{var}")]
    return envs


def expand_table(name: str, body: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Expand one named table (compartment, derived, output) over its ``for`` ranges."""
    if not isinstance(body, dict):
        return [(name, body)]
    if "for" not in body:
        if _PLACEHOLDER.search(name):
            raise ModelFileError(
                f"the name {name!r} has a placeholder but the table has no 'for' range", key=where
            )
        return [(name, _fill(body, {}))]
    rest = {k: v for k, v in body.items() if k != "for"}
    out = []
    for env in _environments(body["for"], where):
        try:
            out.append((substitute(name, env), _fill(rest, env)))
        except ModelFileError as exc:
            raise ModelFileError(exc.message, key=where) from None
    return out


def expand_list_item(body: Any, where: str) -> list[Any]:
    """Expand one item of an array of tables (a flow) over its ``for`` ranges."""
    if not isinstance(body, dict):
        return [body]
    if "for" not in body:
        return [_fill(body, {})]
    rest = {k: v for k, v in body.items() if k != "for"}
    try:
        return [_fill(rest, env) for env in _environments(body["for"], where)]
    except ModelFileError as exc:
        if exc.key:
            raise
        raise ModelFileError(exc.message, key=where) from None
