"""python-hcl2's reading of terraform/ and a tiny evaluator for the subset of HCL the checks need
(the policy file's numbers, for_each, dynamic blocks, templates)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hcl2.utils import SerializationOptions

if TYPE_CHECKING:
    from tests.tf_model import Terraform


# python-hcl2 8.x keeps the quotes of string literals unless told otherwise; explicit blocks
# (the default) tell a nested block (a list of dicts marked __is_block__) from a map attribute.
_OPTIONS = SerializationOptions(strip_string_quotes=True, with_comments=False)


def _plain(node: Any) -> Any:
    """The parsed tree without python-hcl2's __is_block__ / __comments__ markers."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


# --- Expression helpers ------------------------------------------------------------------


def block(body: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The first nested block `name` of a body (blocks parse as lists of dicts)."""
    if not body:
        return None
    value = body.get(name)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value[0]
    return None


def blocks(body: Mapping[str, Any] | None, name: str) -> list[dict[str, Any]]:
    if not body:
        return []
    value = body.get(name)
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def dynamic_blocks(body: Mapping[str, Any] | None, name: str) -> list[dict[str, Any]]:
    """`dynamic "name" { for_each = ...; content { ... } }` blocks of a body."""
    found = []
    for dyn in blocks(body, "dynamic"):
        if name in dyn:
            found.append(dyn[name])
    return found


def is_expr(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def expr(value: Any) -> str:
    """`${x}` -> `x`; anything else as a string."""
    if is_expr(value):
        return value[2:-1].strip()
    return str(value)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def references(value: Any, prefix: str) -> set[str]:
    """Names referenced as `prefix.NAME` anywhere in value, e.g. prefix='google_pubsub_topic'."""
    pattern = re.compile(rf"\b{re.escape(prefix)}\.([A-Za-z0-9_-]+)")
    found: set[str] = set()
    for s in strings(value):
        found.update(pattern.findall(s))
    return found


def sa_ref(value: Any, attribute: str) -> str | None:
    """The service account key in google_service_account.NAME.attr or .NAME["KEY"].attr
    (returned as NAME or NAME[KEY])."""
    if not is_expr(value):
        return None
    m = re.fullmatch(
        rf'google_service_account\.([A-Za-z0-9_-]+)(?:\["([A-Za-z0-9_-]+)"\])?\.{re.escape(attribute)}',
        expr(value),
    )
    if not m:
        return None
    return f"{m.group(1)}[{m.group(2)}]" if m.group(2) else m.group(1)


# --- A tiny evaluator: the policy file's numbers, for_each, dynamic blocks -----------------

_MISSING = object()

_TOKEN = re.compile(
    r'\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>"(?:[^"\\]|\\.)*")'
    r"|(?P<op>==|!=|&&|\|\||[?:!\[\](){},.*=])|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))"
)

_ESCAPES = {"n": "\n", "t": "\t"}


class Unevaluable(ValueError):
    pass


class Evaluator:
    """Evaluates the subset of HCL the checks need: numbers, strings, true/false/null, lists,
    objects, `local.a.b["c"]`, `var.x` (from given values or defaults), `path.module`,
    iterator references (each.key, each.value.x, a dynamic block's <label>.value), `!`, `*`,
    `==`, `!=`, `&&`, `||`, `c ? a : b`, `"${...}s"` templates and the functions yamldecode,
    file, toset, tolist, contains, keys, length, min, max, jsonencode, base64encode. Anything
    else (a resource attribute, a `for` expression...) raises Unevaluable: a check that needs a
    value then reports it instead of guessing."""

    def __init__(
        self,
        tf: Terraform,
        variables: Mapping[str, Any] | None = None,
        context: Mapping[str, Mapping[str, Any]] | None = None,
        cache: dict[str, Any] | None = None,
    ) -> None:
        self.tf = tf
        self.variables = dict(variables or {})
        self.context = dict(context or {})
        self._cache: dict[str, Any] = {} if cache is None else cache
        self._raw_maps = False

    def bind(self, iterator: str, key: Any, value: Any) -> Evaluator:
        """An evaluator where `<iterator>.key` / `<iterator>.value` are key / value."""
        return Evaluator(
            self.tf, self.variables, {**self.context, iterator: {"key": key, "value": value}}, self._cache
        )

    def context_ref_pattern(self) -> re.Pattern[str] | None:
        if not self.context:
            return None
        names = "|".join(re.escape(n) for n in sorted(self.context, key=len, reverse=True))
        return re.compile(
            rf'(?<![A-Za-z0-9_.\-"\]])(?:{names})\.(?:key|value)'
            r'(?:\.[A-Za-z_][A-Za-z0-9_-]*|\["[^"]*"\]|\[\d+\])*(?![A-Za-z0-9_-])'
        )

    def for_each(self, raw: Any) -> dict[str, Any]:
        """key -> each.value of a for_each. A map written in `locals` comes back as written."""
        self._raw_maps = True
        try:
            value = self.value(raw)
        finally:
            self._raw_maps = False
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        if isinstance(value, set | frozenset | list) and all(isinstance(v, str) for v in value):
            return {v: v for v in sorted(value)}
        raise Unevaluable(f"for_each = {raw!r} is neither a map nor a set of strings")

    def value(self, raw: Any) -> Any:
        if isinstance(raw, bool | int | float) or raw is None:
            return raw
        if isinstance(raw, dict):
            return {k: self.value(v) for k, v in raw.items()}
        if isinstance(raw, list):
            return [self.value(v) for v in raw]
        if not isinstance(raw, str):
            raise Unevaluable(repr(raw))
        if is_expr(raw) and _balanced(raw[2:-1]):
            return self.expression(raw[2:-1].strip())
        return self.template(raw)

    def template(self, raw: str) -> str:
        out, i = [], 0
        while i < len(raw):
            start = raw.find("${", i)
            if start < 0:
                out.append(raw[i:])
                break
            out.append(raw[i:start])
            end = _closing(raw, start + 2)
            out.append(_to_str(self.expression(raw[start + 2 : end].strip())))
            i = end + 1
        return "".join(out)

    def expression(self, text: str) -> Any:
        parser = _Parser(self, text)
        thunk = parser.parse()
        return thunk()

    def local(self, name: str) -> Any:
        if name in self.tf.evaluated_locals:
            return self.tf.evaluated_locals[name]
        if name not in self.tf.locals:
            raise Unevaluable(f"local.{name} is not defined")
        raw = self.tf.locals[name]
        if self._raw_maps and isinstance(raw, dict):
            return raw
        if name not in self._cache:
            self._cache[name] = self.value(raw)
        return self._cache[name]

    def var(self, name: str) -> Any:
        if name in self.variables:
            return self.variables[name]
        default = self.tf.variables.get(name, {}).get("default", _MISSING)
        if default is _MISSING:
            raise Unevaluable(f"var.{name} has no default and no value was given")
        return self.value(default) if isinstance(default, str) and "${" in default else default


_FUNCTIONS: dict[str, Any] = {
    "yamldecode": lambda ev, s: yaml.safe_load(s),
    "file": lambda ev, p: Path(p).read_text(),
    "toset": lambda ev, xs: set(xs),
    "tolist": lambda ev, xs: list(xs),
    "contains": lambda ev, xs, x: x in xs,
    "keys": lambda ev, m: sorted(m),
    "length": lambda ev, xs: len(xs),
    "join": lambda ev, sep, xs: sep.join(xs),
    "min": lambda ev, *xs: min(xs),
    "max": lambda ev, *xs: max(xs),
    # Terraform's jsonencode is compact; base64encode encodes the string's UTF-8 bytes.
    "jsonencode": lambda ev, v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "base64encode": lambda ev, s: base64.b64encode(s.encode()).decode("ascii"),
}


class _Parser:
    """Recursive descent over one HCL expression; each rule returns a thunk, so that only the
    taken branch of `c ? a : b` is evaluated."""

    def __init__(self, ev: Evaluator, text: str) -> None:
        self.ev = ev
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.lastgroup is None:
                raise Unevaluable(f"{self.text}: cannot read {text[pos:]!r}")
            self.tokens.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        self.i = 0

    def parse(self) -> Any:
        thunk = self._ternary()
        if self.i != len(self.tokens):
            raise Unevaluable(f"{self.text}: unexpected {self.tokens[self.i][1]!r}")
        return thunk

    # -- tokens
    def _peek(self, value: str | None = None, kind: str | None = None) -> bool:
        if self.i >= len(self.tokens):
            return False
        k, v = self.tokens[self.i]
        return (value is None or v == value) and (kind is None or k == kind)

    def _take(self, value: str | None = None, kind: str | None = None) -> str:
        if not self._peek(value, kind):
            got = self.tokens[self.i][1] if self.i < len(self.tokens) else "the end"
            raise Unevaluable(f"{self.text}: expected {value or kind}, got {got!r}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    # -- rules, loosest first
    def _ternary(self) -> Any:
        cond = self._binary(0)
        if not self._peek("?"):
            return cond
        self._take("?")
        yes = self._ternary()
        self._take(":")
        no = self._ternary()
        return lambda: yes() if _bool(cond(), self.text) else no()

    _LEVELS = (("||",), ("&&",), ("==", "!="), ("*",))

    def _binary(self, level: int) -> Any:
        if level == len(self._LEVELS):
            return self._unary()
        left = self._binary(level + 1)
        while self.i < len(self.tokens) and self.tokens[self.i] in {("op", o) for o in self._LEVELS[level]}:
            op = self._take()
            right = self._binary(level + 1)
            left = self._combine(op, left, right)
        return left

    def _combine(self, op: str, left: Any, right: Any) -> Any:
        text = self.text
        if op == "||":
            return lambda: _bool(left(), text) or _bool(right(), text)
        if op == "&&":
            return lambda: _bool(left(), text) and _bool(right(), text)
        if op == "==":
            return lambda: left() == right()
        if op == "!=":
            return lambda: left() != right()
        return lambda: _number(left(), text) * _number(right(), text)

    def _unary(self) -> Any:
        if self._peek("!", "op"):
            self._take()
            inner = self._unary()
            return lambda: not _bool(inner(), self.text)
        return self._postfix()

    def _postfix(self) -> Any:
        thunk = self._primary()
        while self._peek(".", "op") or self._peek("[", "op"):
            if self._take() == ".":
                name = self._take(kind="name") if not self._peek(kind="num") else self._take(kind="num")
                thunk = self._step(thunk, lambda name=name: name)
            else:
                index = self._ternary()
                self._take("]")
                thunk = self._step(thunk, index)
        return thunk

    def _step(self, base: Any, key: Any) -> Any:
        text = self.text

        def get() -> Any:
            node, k = base(), key()
            if isinstance(node, Mapping) and isinstance(k, str) and k in node:
                return node[k]
            index = int(k) if isinstance(k, int | str) and str(k).isdigit() else None
            if isinstance(node, list) and index is not None and index < len(node):
                return node[index]
            raise Unevaluable(f"{text}: no {k!r} in {type(node).__name__}")

        return get

    def _primary(self) -> Any:
        if self.i >= len(self.tokens):
            raise Unevaluable(f"{self.text}: unexpected end")
        kind, tok = self.tokens[self.i]
        if kind == "num":
            self.i += 1
            number = float(tok) if "." in tok else int(tok)
            return lambda: number
        if kind == "str":
            self.i += 1
            literal = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), tok[1:-1])
            return lambda: self.ev.template(literal) if "${" in literal else literal
        if tok == "(":
            self._take("(")
            inner = self._ternary()
            self._take(")")
            return inner
        if tok == "[":
            return self._list()
        if tok == "{":
            return self._object()
        if kind != "name":
            raise Unevaluable(f"{self.text}: unexpected {tok!r}")
        self.i += 1
        if tok in ("true", "false", "null"):
            constant = {"true": True, "false": False, "null": None}[tok]
            return lambda: constant
        if self._peek("(", "op"):
            return self._call(tok)
        return self._root(tok)

    def _list(self) -> Any:
        self._take("[")
        items = []
        while not self._peek("]"):
            items.append(self._ternary())
            if not self._peek("]"):
                self._take(",")
        self._take("]")
        return lambda: [item() for item in items]

    def _object(self) -> Any:
        self._take("{")
        entries = []
        while not self._peek("}"):
            kind, tok = self.tokens[self.i]
            if kind not in ("name", "str"):
                raise Unevaluable(f"{self.text}: object key {tok!r}")
            self.i += 1
            key = tok[1:-1] if kind == "str" else tok
            if not (self._peek("=") or self._peek(":")):
                raise Unevaluable(f"{self.text}: expected = after {key}")
            self.i += 1
            entries.append((key, self._ternary()))
            if self._peek(","):
                self._take(",")
        self._take("}")
        return lambda: {k: v() for k, v in entries}

    def _call(self, name: str) -> Any:
        if name not in _FUNCTIONS:
            raise Unevaluable(f"{self.text}: function {name}() is not evaluated offline")
        self._take("(")
        args = []
        while not self._peek(")"):
            args.append(self._ternary())
            if not self._peek(")"):
                self._take(",")
        self._take(")")
        fn = _FUNCTIONS[name]
        return lambda: fn(self.ev, *(a() for a in args))

    def _root(self, name: str) -> Any:
        ev = self.ev
        if name in ("local", "var"):
            self._take(".")
            attr = self._take(kind="name")
            return (lambda: ev.local(attr)) if name == "local" else (lambda: ev.var(attr))
        if name == "path":
            self._take(".")
            if self._take(kind="name") != "module":
                raise Unevaluable(f"{self.text}: only path.module is known")
            return lambda: str(ev.tf.root)
        if name in ev.context:
            return lambda: ev.context[name]
        raise Unevaluable(f"{self.text}: {name} is not a local, a variable or an iterator")


def _bool(value: Any, text: str) -> bool:
    if not isinstance(value, bool):
        raise Unevaluable(f"{text}: {value!r} is not a bool")
    return value


def _number(value: Any, text: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unevaluable(f"{text}: {value!r} is not a number")
    return value


def _balanced(inner: str) -> bool:
    """True when `${inner}` is one interpolation, not `${a}x${b}`."""
    depth = 1
    i = 0
    while i < len(inner):
        if inner.startswith("${", i):
            depth += 1
            i += 2
            continue
        if inner[i] == "{":
            depth += 1
        elif inner[i] == "}":
            depth -= 1
            if depth == 0:
                return False
        i += 1
    return True


def _closing(raw: str, i: int) -> int:
    depth = 1
    while i < len(raw):
        if raw[i] == "{":
            depth += 1
        elif raw[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise Unevaluable(raw)


def _to_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
