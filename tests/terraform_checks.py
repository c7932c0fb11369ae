"""Offline wiring checks for terraform/: pure functions over the parsed HCL.

The google provider cannot be downloaded where the tests run, so `terraform validate/plan`
are out of reach. These checks read the .tf files with python-hcl2 and prove, link by link,
that the pipeline is wired: alert policy -> notification channel -> alerts topic ->
breach_counter; rollback topic -> rollback; scheduler job -> function with an OIDC identity
that may invoke exactly that function and a body it accepts; metric incidents that keep the
resource labels the decoder reads; thresholds taken from the policy file; entry points and
environment variables matching the functions' contract; least-privilege IAM.

Resources declared with `for_each` over a map in `locals` (the five functions, their callers,
the scheduler jobs, the dead-letter attachers) are checked instance by instance: `instances`
evaluates the for_each and the `dynamic` blocks and substitutes each.key / each.value with the
map's entries as written, so every check sees one body per function with the same references
a hand-written block would have. What cannot be evaluated offline is left as written, and the
checks then report the link as missing rather than assume it.

Every `check_*` function takes a `Terraform` (see `load`) and returns a list of problems, an
empty list meaning the link holds, so a test can both assert a clean tree and prove that a
cut link is reported.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import yaml
from hcl2.utils import SerializationOptions

# python-hcl2 8.x keeps the quotes of string literals unless told otherwise; explicit blocks
# (the default) tell a nested block (a list of dicts marked __is_block__) from a map attribute.
_OPTIONS = SerializationOptions(strip_string_quotes=True, with_comments=False)

MONITORING_AGENT_RE = re.compile(
    r"^serviceAccount:service-\$\{local\.project_number\}@gcp-sa-monitoring-notification\.iam\.gserviceaccount\.com$"
)
PUBSUB_AGENT_RE = re.compile(
    r"^serviceAccount:service-\$\{local\.project_number\}@gcp-sa-pubsub\.iam\.gserviceaccount\.com$"
)
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")
BASIC_ROLES = ("roles/owner", "roles/editor", "roles/viewer")
IAM_TYPES_AUTHORITATIVE = (
    "google_project_iam_binding",
    "google_project_iam_policy",
    "google_project_iam_audit_config",
)
# Attributes of alert policies / uptime checks / scheduler jobs that the policy file owns.
POLICY_OWNED_ATTRIBUTES = (
    "threshold_value",
    "duration",
    "renotify_interval",
    "auto_close",
    "alignment_period",
    "period",
    "timeout",
    "schedule",
    "time_zone",
)


# --- Loading -----------------------------------------------------------------------------


@dataclass
class Terraform:
    """terraform/ parsed: resources[type][name] -> body, and the other top-level blocks."""

    root: Path
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    required_providers: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    # Locals of services.tf as terraform itself evaluates them (evaluate_services).
    evaluated_locals: dict[str, Any] = field(default_factory=dict)

    def resource(self, rtype: str, name: str) -> dict[str, Any] | None:
        return self.resources.get(rtype, {}).get(name)

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        return self.resources.get(rtype, {})

    def all_resources(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for rtype, by_name in self.resources.items():
            for name, body in by_name.items():
                yield rtype, name, body


def load(tf_dir: Path) -> Terraform:
    tf = Terraform(root=tf_dir)
    for path in sorted(tf_dir.glob("*.tf")):
        text = path.read_text()
        tf.texts[path.name] = text
        parsed = hcl2.loads(text, serialization_options=_OPTIONS)
        for item in parsed.get("resource", []):
            for rtype, by_name in _plain(item).items():
                for name, body in by_name.items():
                    tf.resources.setdefault(rtype, {})[name] = body
        for item in parsed.get("data", []):
            for dtype, by_name in _plain(item).items():
                for name, body in by_name.items():
                    tf.data.setdefault(dtype, {})[name] = body
        for item in parsed.get("locals", []):
            tf.locals.update(_plain(item))
        for item in parsed.get("variable", []):
            tf.variables.update(_plain(item))
        for item in parsed.get("output", []):
            tf.outputs.update(_plain(item))
        for item in parsed.get("terraform", []):
            for providers in _plain(item).get("required_providers", []):
                tf.required_providers.update(providers)
    if (tf_dir / SERVICES_TF).is_file():
        tf.evaluated_locals = evaluate_services(tf)
    return tf


# --- services.tf, evaluated by terraform ---------------------------------------------------
#
# Everything that exists once per watched service is derived in services.tf from variables
# only: terraform itself evaluates those locals here (no provider needed: no resources), for
# CHECK_SERVICES, and the checks then see one instance per service, rule group and grant as
# `terraform plan` would. Its `for` expressions are beyond the offline evaluator below.

SERVICES_TF = "services.tf"
CHECK_SERVICES: dict[str, dict[str, str]] = {
    "checkout": {"canary_tag_url": "https://canary---checkout-abc123-ew.a.run.app"},
    "search": {},
    "accounts": {
        "location": "europe-west4",
        "runtime_service_account": "accounts-run@canary-guard-check.iam.gserviceaccount.com",
    },
}
CHECK_PROJECT, CHECK_REGION = "canary-guard-check", "europe-west1"
_EVALUATED: dict[str, dict[str, Any]] = {}


class TerraformUnavailable(RuntimeError):
    pass


def evaluate_services(
    tf: Terraform, services: Mapping[str, Any] | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The locals of services.tf for `services` (default CHECK_SERVICES), evaluated by running
    terraform on services.tf, variables.tf and the locals it reads from elsewhere (local.alerting
    from the policy file, local.function_target_service_roles from iam.tf); `extra`: more
    outputs (name -> expression over those)."""
    import hashlib
    import shutil
    import subprocess
    import tempfile

    services = CHECK_SERVICES if services is None else services
    names = sorted(_locals_of(tf.texts[SERVICES_TF]))
    stubs = {
        "alerting": f'yamldecode(file("{tf.root.resolve() / ".." / "shared" / "policy.yaml"}")).alerting',
        "function_target_service_roles": "jsondecode("
        + json.dumps(json.dumps(tf.locals.get("function_target_service_roles", {})))
        + ")",
        "traffic_updaters": "[]",
    }
    config = (
        tf.texts[SERVICES_TF]
        + "\n"
        + tf.texts["variables.tf"]
        + "\nlocals {\n"
        + "".join(f"  {name} = {expr}\n" for name, expr in stubs.items())
        + "}\n"
        + "".join(f'output "{name}" {{\n  value = local.{name}\n}}\n' for name in names)
        + "".join(f'output "{name}" {{\n  value = {value}\n}}\n' for name, value in (extra or {}).items())
    )
    values = {
        "project_id": CHECK_PROJECT,
        "region": CHECK_REGION,
        "services": services,
        "emergency_rollback_members": ["group:oncall@example.com"],
    }
    policy = (tf.root / ".." / "shared" / "policy.yaml").read_text()
    key = hashlib.sha256((config + json.dumps(values, sort_keys=True) + policy).encode()).hexdigest()
    if key in _EVALUATED:
        return _EVALUATED[key]
    terraform = shutil.which("terraform")
    if terraform is None:
        raise TerraformUnavailable("terraform is not on PATH: services.tf cannot be evaluated")
    with tempfile.TemporaryDirectory(prefix="cg-services-") as work:
        Path(work, "main.tf").write_text(config)
        Path(work, "check.tfvars.json").write_text(json.dumps(values))
        env = {"PATH": "/usr/bin:/bin:" + str(Path(terraform).parent), "TF_IN_AUTOMATION": "1", "HOME": work}
        for argv in (
            [terraform, "init", "-input=false", "-no-color"],
            [terraform, "apply", "-auto-approve", "-input=false", "-no-color", "-var-file=check.tfvars.json"],
        ):
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode:
                raise Unevaluable(f"terraform on services.tf failed: {done.stderr.strip()[-2000:]}")
        out = subprocess.run(
            [terraform, "output", "-json", "-no-color"], cwd=work, env=env, capture_output=True, text=True
        )
        result = {name: entry["value"] for name, entry in json.loads(out.stdout).items()}
    _EVALUATED[key] = result
    return result


def render_dashboard(tf: Terraform, services: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """google_monitoring_dashboard.canary's dashboard_json as terraform renders it for `services`
    (the names of the resources it links, alert policies and subscriptions, stubbed)."""
    raw = str(tf.resource("google_monitoring_dashboard", "canary")["dashboard_json"])
    expression = raw[2:-1] if is_expr(raw) else raw
    expression = re.sub(
        r"google_[a-z0-9_]+\.[a-z0-9_]+(\[[^\]]*\])?\.name",
        lambda m: json.dumps(re.sub(r"[^\w./-]", "-", m.group(0))),
        expression,
    )
    expression = expression.replace("${path.module}", str(tf.root.resolve()))
    rendered = evaluate_services(tf, services, {"dashboard_json": expression})["dashboard_json"]
    return json.loads(rendered)


def _locals_of(text: str) -> set[str]:
    names: set[str] = set()
    for item in hcl2.loads(text, serialization_options=_OPTIONS).get("locals", []):
        names.update(_plain(item))
    return names


def _plain(node: Any) -> Any:
    """The parsed tree without python-hcl2's __is_block__ / __comments__ markers."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_policy(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


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


# --- Resource instances: for_each and dynamic blocks expanded --------------------------------


@dataclass(frozen=True)
class Instance:
    """One resource instance: a resource without for_each, or one key of its for_each, with
    each.key / each.value substituted and dynamic blocks turned into the blocks they make."""

    rtype: str
    name: str
    key: str | None
    body: dict[str, Any]

    @property
    def id(self) -> str:
        """What the checks call it: the for_each key (the names the config itself uses, e.g.
        "breach_counter"), else the resource name."""
        return self.name if self.key is None else self.key

    @property
    def address(self) -> str:
        """How Terraform refers to it: TYPE.NAME or TYPE.NAME["KEY"]."""
        return f"{self.rtype}.{self.name}" + ("" if self.key is None else f'["{self.key}"]')

    @property
    def label(self) -> str:
        return f"{self.rtype}.{self.name}" + ("" if self.key is None else f"[{self.key}]")


# The optional features are switched on when the checks expand for_each / dynamic blocks, so
# that their wiring is checked too (a CHAT_WEBHOOK_URL secret, the dead-letter attachers).
CHECK_VARIABLES: dict[str, Any] = {
    "chat_webhook_secret_id": "canary-guard-chat-webhook",
    "grant_pubsub_agent_token_creator": True,
    "services": CHECK_SERVICES,
    "project_id": CHECK_PROJECT,
    "region": CHECK_REGION,
}


def instances(tf: Terraform, rtype: str, variables: Mapping[str, Any] | None = None) -> list[Instance]:
    """Every instance of the resources of type rtype, the for_each and dynamic blocks evaluated
    with `variables` (default CHECK_VARIABLES, then the variables' defaults).

    A for_each over a map written in `locals` yields one instance per key whose each.value is
    the entry AS WRITTEN (expressions stay expressions, e.g. "${google_pubsub_topic.alerts.id}"),
    so the checks see the same references as in a hand-written block. A for_each that cannot be
    evaluated offline (e.g. over a variable without default) leaves one instance, body as
    written, key None; so does a dynamic block whose for_each cannot be evaluated."""
    ev = Evaluator(tf, CHECK_VARIABLES if variables is None else variables)
    out = []
    for name, body in tf.of_type(rtype).items():
        if "for_each" not in body:
            out.append(Instance(rtype, name, None, _instantiate(body, ev)))
            continue
        try:
            items = ev.for_each(body["for_each"])
        except Unevaluable:
            out.append(Instance(rtype, name, None, body))
            continue
        rest = {k: v for k, v in body.items() if k != "for_each"}
        for key, value in items.items():
            out.append(Instance(rtype, name, key, _instantiate(rest, ev.bind("each", key, value))))
    return out


def by_id(tf: Terraform, rtype: str, variables: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Instance id -> body of every instance of rtype (see Instance.id)."""
    found: dict[str, dict[str, Any]] = {}
    for inst in instances(tf, rtype, variables):
        if inst.id in found:
            raise ValueError(f"two {rtype} instances are called {inst.id}: the checks cannot tell them apart")
        found[inst.id] = inst.body
    return found


def _instantiate(node: Any, ev: Evaluator) -> Any:
    """node with the iterator references of ev's context substituted and dynamic blocks expanded."""
    if isinstance(node, list):
        return [_instantiate(v, ev) for v in node]
    if isinstance(node, str):
        return _substitute(node, ev)
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k != "dynamic":
            out[k] = _instantiate(v, ev)
    for dyn in node.get("dynamic") or []:
        for label, spec in dyn.items():
            try:
                made = _expand_dynamic(spec, label, ev)
            except Unevaluable:
                out.setdefault("dynamic", []).append({label: spec})
                continue
            out.setdefault(label, []).extend(made)
    return out


def _expand_dynamic(spec: Mapping[str, Any], label: str, ev: Evaluator) -> list[dict[str, Any]]:
    collection = ev.value(spec.get("for_each"))
    iterator = expr(spec["iterator"]) if spec.get("iterator") else label
    content = block(spec, "content") or {}
    if isinstance(collection, Mapping):
        items = list(collection.items())
    elif isinstance(collection, list):
        items = list(enumerate(collection))
    elif isinstance(collection, set | frozenset):
        items = [(v, v) for v in sorted(collection)]
    else:
        raise Unevaluable(f"dynamic {label}: for_each is {collection!r}")
    return [_instantiate(content, ev.bind(iterator, k, v)) for k, v in items]


def _substitute(s: str, ev: Evaluator) -> Any:
    """Replace the iterator references (each.key, each.value.x, <iterator>.value...) of a string.

    `${each.value.x}` alone becomes the entry's value as written (any type); inside a larger
    expression it becomes that value as HCL text (a string literal quoted), e.g.
    `function[each.key]` -> `function["rollback"]`."""
    pattern = ev.context_ref_pattern()
    if pattern is None or "${" not in s:
        return s
    if is_expr(s) and _balanced(s[2:-1]) and pattern.fullmatch(s[2:-1].strip()):
        return ev.expression(s[2:-1].strip())
    out, i = [], 0
    while (start := s.find("${", i)) >= 0:
        end = _closing(s, start + 2)
        inner = s[start + 2 : end]
        out.append(s[i:start])
        if pattern.fullmatch(inner.strip()):
            out.append(_as_template_part(ev.expression(inner.strip())))
        else:
            out.append("${" + pattern.sub(lambda m: _as_hcl(ev.expression(m.group(0))), inner) + "}")
        i = end + 1
    out.append(s[i:])
    return "".join(out)


def _as_hcl(value: Any) -> str:
    """A value as written, as HCL expression text."""
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return _to_str(value)
    if isinstance(value, str):
        if is_expr(value) and _balanced(value[2:-1]):
            inner = value[2:-1].strip()
            return inner if re.fullmatch(r'[A-Za-z0-9_.\-\["\]]+', inner) else f"({inner})"
        if "${" not in value:
            return json.dumps(value)
    raise Unevaluable(f"{value!r} cannot be written into an expression")


def _as_template_part(value: Any) -> str:
    if isinstance(value, bool | int | float):
        return _to_str(value)
    if isinstance(value, str):
        return value  # a literal, or an expression / template as written: still a template part
    raise Unevaluable(f"{value!r} cannot be written into a string")


def function_instances(tf: Terraform, variables: Mapping[str, Any] | None = None) -> dict[str, Instance]:
    """Function id (its for_each key, or the resource name) -> instance."""
    found: dict[str, Instance] = {}
    for inst in instances(tf, "google_cloudfunctions2_function", variables):
        if inst.id in found:
            raise ValueError(f"two functions are called {inst.id}: the checks cannot tell them apart")
        found[inst.id] = inst
    return found


def functions(tf: Terraform, variables: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Function id -> its body, for_each and dynamic blocks expanded."""
    return {fid: inst.body for fid, inst in function_instances(tf, variables).items()}


def function_ref(tf: Terraform, value: Any, attribute: str) -> str | None:
    """The id of the function in `google_cloudfunctions2_function.NAME["KEY"].<attribute>` (or
    `.NAME.<attribute>`), if that is the value. A reference to an instance that does not exist
    comes back as NAME[KEY], which is no function's id."""
    if not is_expr(value):
        return None
    m = re.fullmatch(
        rf'google_cloudfunctions2_function\.([A-Za-z0-9_-]+)(?:\["([A-Za-z0-9_-]+)"\])?\.{re.escape(attribute)}',
        expr(value),
    )
    if not m:
        return None
    name, key = m.groups()
    for fid, inst in function_instances(tf).items():
        if (inst.name, inst.key) == (name, key):
            return fid
    return name if key is None else f"{name}[{key}]"


def entry_point(fn_body: Mapping[str, Any]) -> str | None:
    build = block(fn_body, "build_config")
    return build.get("entry_point") if build else None


def function_by_entry(tf: Terraform) -> dict[str, str]:
    """entry point -> id of the function."""
    return {ep: name for name, body in functions(tf).items() if (ep := entry_point(body))}


def env_of(fn_body: Mapping[str, Any]) -> dict[str, Any]:
    service = block(fn_body, "service_config") or {}
    env = service.get("environment_variables")
    return dict(env) if isinstance(env, dict) else {}


def secret_env_keys(fn_body: Mapping[str, Any]) -> set[str]:
    """Keys of the secret_environment_variables blocks (dynamic ones already expanded: one that
    could not be evaluated provides nothing)."""
    service = block(fn_body, "service_config") or {}
    return {k for b in blocks(service, "secret_environment_variables") if (k := b.get("key"))}


def invoker_grants(tf: Terraform) -> list[tuple[Instance, str | None, str]]:
    """(instance, invoked function id or None, member expression) of every run.invoker grant
    on a Cloud Run service (a function's underlying service or the target service)."""
    grants = []
    for inst in instances(tf, "google_cloud_run_v2_service_iam_member"):
        if inst.body.get("role") != "roles/run.invoker":
            continue
        invoked = function_ref(tf, inst.body.get("name"), "service_config[0].service")
        grants.append((inst, invoked, inst.body.get("member", "")))
    return grants


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


# --- Checks --------------------------------------------------------------------------------


def check_alert_chain(tf: Terraform, *, consumer_entry_point: str = "breach_counter") -> list[str]:
    """Every alert policy -> a pubsub notification channel -> a topic -> the consumer's push subscription."""
    problems: list[str] = []
    channels = tf.of_type("google_monitoring_notification_channel")
    policies = alert_policies(tf)
    if not policies:
        return ["no google_monitoring_alert_policy at all"]
    consumer = function_by_entry(tf).get(consumer_entry_point)
    trigger_topic = None
    if consumer is None:
        problems.append(f"no function with entry point {consumer_entry_point}")
    else:
        subs = [d for d in push_deliveries(tf) if d.function == consumer]
        if len(subs) != 1:
            problems.append(f"{consumer_entry_point} has {len(subs)} push subscriptions, expected 1")
        elif subs[0].topic is None:
            problems.append(f"{subs[0].label}: topic is not one google_pubsub_topic's .id")
        else:
            trigger_topic = subs[0].topic
    for pname, policy in policies.items():
        names = references(policy.get("notification_channels"), "google_monitoring_notification_channel")
        if not names:
            problems.append(f"alert policy {pname} notifies no notification channel")
            continue
        for cname in sorted(names):
            channel = channels.get(cname)
            if channel is None:
                problems.append(f"alert policy {pname} refers to unknown channel {cname}")
                continue
            if channel.get("type") != "pubsub":
                problems.append(f"channel {cname} (used by {pname}) is not of type pubsub")
            topics = references((channel.get("labels") or {}).get("topic"), "google_pubsub_topic")
            if len(topics) != 1 or not expr((channel.get("labels") or {}).get("topic")).endswith(".id"):
                problems.append(f"channel {cname} labels.topic is not one google_pubsub_topic's .id")
                continue
            topic = next(iter(topics))
            if trigger_topic is not None and topic != trigger_topic:
                problems.append(
                    f"alert policy {pname} -> channel {cname} -> topic {topic}, but "
                    f"{consumer_entry_point}'s push subscription is on topic {trigger_topic}"
                )
    return problems


def alert_policies(tf: Terraform, variables: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every alert policy instance (for_each expanded), by its label."""
    return {inst.label: inst.body for inst in instances(tf, "google_monitoring_alert_policy", variables)}


def check_alert_policies(tf: Terraform, rule_names: Iterable[str]) -> list[str]:
    """canary_rule labels, renotify + close notifications (streak semantics), one per rule."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for pname, policy in alert_policies(tf).items():
        rule = (policy.get("user_labels") or {}).get("canary_rule")
        if rule not in set(rule_names):
            problems.append(f"alert policy {pname} has canary_rule={rule!r}, not one of {sorted(rule_names)}")
        elif rule in seen:
            problems.append(f"alert policies {seen[rule]} and {pname} both have canary_rule={rule}")
        else:
            seen[rule] = pname
        strategy = block(policy, "alert_strategy")
        if not strategy:
            problems.append(f"alert policy {pname} has no alert_strategy")
            continue
        prompts = strategy.get("notification_prompts") or []
        if "OPENED" not in prompts or "CLOSED" not in prompts:
            problems.append(f"alert policy {pname} must notify OPENED and CLOSED (a close is a recovery)")
        ncs = block(strategy, "notification_channel_strategy")
        if not ncs or not ncs.get("renotify_interval"):
            problems.append(f"alert policy {pname} has no renotify_interval (renotifications are breaches)")
        elif references(
            ncs.get("notification_channel_names"), "google_monitoring_notification_channel"
        ) != references(policy.get("notification_channels"), "google_monitoring_notification_channel"):
            problems.append(f"alert policy {pname} renotifies other channels than it notifies")
        if not strategy.get("auto_close"):
            problems.append(f"alert policy {pname} has no auto_close")
        for cond in blocks(policy, "conditions"):
            if not block(cond, "condition_threshold"):
                problems.append(f"alert policy {pname} has a condition that is not a condition_threshold")
    missing = set(rule_names) - set(seen)
    if missing:
        problems.append(f"no alert policy for rule(s) {sorted(missing)}")
    return problems


def check_alert_group_by(tf: Terraform, labels: Iterable[str]) -> list[str]:
    """Every aggregation with a cross-series reducer in a Cloud Run metric policy (numerator and
    denominator) groups by at least resource.label.<l> for each of `labels`, the resource labels
    the incident decoder reads. Monitoring aggregates away every resource label not in
    group_by_fields, and the incident carries only the labels that are left."""
    problems: list[str] = []
    needed = [f"resource.label.{label}" for label in labels]
    ev = Evaluator(tf)
    for pname, policy in alert_policies(tf).items():
        for cond in blocks(policy, "conditions"):
            threshold = block(cond, "condition_threshold") or {}
            # Cloud Run metrics are written against cloud_run_revision (the uptime check's are not).
            try:
                metric_filter = str(ev.value(threshold.get("filter", "")))
            except Unevaluable:
                metric_filter = str(threshold.get("filter", ""))
            if "run.googleapis.com/" not in metric_filter:
                continue
            grouped: dict[str, list[str]] = {}
            for agg_name in ("aggregations", "denominator_aggregations"):
                for agg in blocks(threshold, agg_name):
                    if agg.get("cross_series_reducer", "REDUCE_NONE") == "REDUCE_NONE":
                        continue  # no reduction: every label is kept
                    try:
                        fields = ev.value(agg.get("group_by_fields") or [])
                    except Unevaluable as exc:
                        problems.append(
                            f"alert policy {pname} {agg_name}: group_by_fields not evaluated ({exc})"
                        )
                        continue
                    fields = fields if isinstance(fields, list) else []
                    lacking = [f for f in needed if f not in fields]
                    if lacking:
                        problems.append(
                            f"alert policy {pname} {agg_name} aggregates away {', '.join(lacking)} "
                            f"(group_by_fields = {fields})"
                        )
                    grouped.setdefault(agg_name, []).extend(fields)
            if len(grouped) == 2 and set(grouped["aggregations"]) != set(grouped["denominator_aggregations"]):
                problems.append(f"alert policy {pname}: numerator and denominator group by different fields")
    return problems


def check_thresholds_from_policy(
    tf: Terraform, policy: Mapping[str, Any], variables: Mapping[str, Any] | None = None
) -> list[str]:
    """threshold_value = local.rules.<rule>.threshold, local.rules = the policy file's
    rollback_rules, and every policy-owned attribute (durations, intervals, schedules) is an
    expression over the policy file whose value equals the file's."""
    problems: list[str] = []
    ev = Evaluator(tf, variables)
    policy_local = expr(tf.locals.get("policy", ""))
    if not re.fullmatch(r'yamldecode\(file\("\$\{path\.module\}/\.\./shared/policy\.yaml"\)\)', policy_local):
        problems.append('local.policy is not yamldecode(file("${path.module}/../shared/policy.yaml"))')

    alerting = policy["alerting"]
    expected = {
        "duration": f"{alerting['duration_s']}s",
        "renotify_interval": f"{alerting['renotify_interval_s']}s",
        "auto_close": f"{alerting['auto_close_s']}s",
    }
    for pname, body in alert_policies(tf, variables).items():
        rule = (body.get("user_labels") or {}).get("canary_rule")
        for cond in blocks(body, "conditions"):
            threshold = block(cond, "condition_threshold") or {}
            raw = threshold.get("threshold_value")
            if not is_expr(raw) or not re.search(r"\blocal\.", expr(raw)):
                problems.append(
                    f"alert policy {pname}: threshold_value {raw!r} is typed here, "
                    "not read from the policy file"
                )
                continue
            try:
                got = ev.value(raw)
            except Unevaluable as exc:
                problems.append(f"alert policy {pname}: threshold_value cannot be evaluated: {exc}")
                continue
            want = policy["rollback_rules"].get(rule, {}).get("threshold")
            if got != want:
                problems.append(
                    f"alert policy {pname}: threshold_value evaluates to {got!r}, policy file says {want!r}"
                )
            try:
                if ev.value(threshold.get("duration")) != expected["duration"]:
                    problems.append(f"alert policy {pname}: duration is not the policy's alerting.duration_s")
            except Unevaluable as exc:
                problems.append(f"alert policy {pname}: duration cannot be evaluated: {exc}")
        strategy = block(body, "alert_strategy") or {}
        ncs = block(strategy, "notification_channel_strategy") or {}
        for attr, node in (("auto_close", strategy), ("renotify_interval", ncs)):
            try:
                if ev.value(node.get(attr)) != expected[attr]:
                    problems.append(f"alert policy {pname}: {attr} is not the policy's {attr}_s")
            except Unevaluable as exc:
                problems.append(f"alert policy {pname}: {attr} cannot be evaluated: {exc}")
    problems.extend(_hard_coded_numbers(tf))
    return problems


def _hard_coded_numbers(tf: Terraform) -> list[str]:
    """No number literal in a policy-owned attribute of alert policies, uptime checks or jobs."""
    problems: list[str] = []
    owned_types = (
        "google_monitoring_alert_policy",
        "google_monitoring_uptime_check_config",
        "google_cloud_scheduler_job",
    )

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in POLICY_OWNED_ATTRIBUTES and _has_literal_number(v):
                    problems.append(f"{where}.{k} = {v!r} hard-codes a number the policy file owns")
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    for rtype in owned_types:
        for inst in instances(tf, rtype):
            walk(inst.body, inst.label)
    return problems


def _has_literal_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if not isinstance(value, str):
        return False
    # Text outside ${...} (e.g. "60s", "* * * * *") is literal.
    outside = re.sub(r"\$\{[^}]*\}", "", value)
    return bool(re.search(r"\d", outside))


@dataclass(frozen=True)
class PushDelivery:
    """One push subscription (an instance of google_pubsub_subscription with a push_config)."""

    label: str
    address: str
    body: dict[str, Any]
    function: str | None  # the function whose service_config[0].uri it pushes to
    topic: str | None  # the google_pubsub_topic it subscribes to (by its .id)
    pusher: str | None  # the service account of its OIDC token
    dead_letter_topic: str | None


def _one_topic(value: Any) -> str | None:
    refs = references(value, "google_pubsub_topic")
    return next(iter(refs)) if len(refs) == 1 and expr(value).endswith(".id") else None


def push_deliveries(tf: Terraform) -> list[PushDelivery]:
    """Every push subscription, its for_each expanded."""
    found = []
    for inst in instances(tf, "google_pubsub_subscription"):
        push = block(inst.body, "push_config")
        if not push:
            continue
        oidc = block(push, "oidc_token") or {}
        dead_letter = block(inst.body, "dead_letter_policy") or {}
        found.append(
            PushDelivery(
                label=inst.label,
                address=inst.address,
                body=inst.body,
                function=function_ref(tf, push.get("push_endpoint"), "service_config[0].uri"),
                topic=_one_topic(inst.body.get("topic")),
                pusher=sa_ref(oidc.get("service_account_email"), "email"),
                dead_letter_topic=_one_topic(dead_letter.get("dead_letter_topic")),
            )
        )
    return found


def check_push_deliveries(tf: Terraform, consumers: Iterable[str]) -> list[str]:
    """Each Pub/Sub-driven function (entry points `consumers`) is delivered by exactly one push
    subscription declared in Terraform: to its own URL, with an OIDC token (audience: that URL)
    of an identity that may invoke exactly that function, a retry policy with backoff, and an
    ack deadline that is the function's timeout. No Eventarc trigger, no provisioner."""
    problems: list[str] = []
    grants = invoker_grants(tf)
    by_entry = function_by_entry(tf)
    deliveries = push_deliveries(tf)
    for name, body in functions(tf).items():
        if block(body, "event_trigger") or dynamic_blocks(body, "event_trigger"):
            problems.append(f"function {name} has an event_trigger: its subscription is not Terraform's")
    for rtype, name, body in tf.all_resources():
        if rtype == "terraform_data" or "provisioner" in body:
            problems.append(
                f"{rtype}.{name} runs a provisioner or is a terraform_data: "
                "apply would need more than Terraform"
            )
    for fname, text in tf.texts.items():
        if "local-exec" in text or "remote-exec" in text:
            problems.append(f"{fname} runs a command during apply")
    for entry in consumers:
        fn = by_entry.get(entry)
        if fn is None:
            problems.append(f"no function with entry point {entry}")
            continue
        mine = [d for d in deliveries if d.function == fn]
        if len(mine) != 1:
            problems.append(f"function {fn}: {len(mine)} push subscriptions deliver to it, expected 1")
            continue
        d = mine[0]
        push = block(d.body, "push_config") or {}
        oidc = block(push, "oidc_token")
        if d.topic is None:
            problems.append(f"{d.label}: topic is not one google_pubsub_topic's .id")
        if not oidc:
            problems.append(f"{d.label}: pushes to {fn} without an OIDC token")
        elif oidc.get("audience") != push.get("push_endpoint"):
            problems.append(f"{d.label}: the OIDC audience is not the function's URL (Cloud Run refuses it)")
        if d.pusher is None:
            problems.append(f"{d.label}: no dedicated service account signs its pushes")
        else:
            problems.extend(_invokes_exactly(tf, grants, d.pusher, fn, f"pusher of {fn}"))
        retry = block(d.body, "retry_policy") or {}
        if not retry.get("minimum_backoff") or not retry.get("maximum_backoff"):
            problems.append(f"{d.label}: no retry_policy with minimum and maximum backoff")
        instance = next(i for i in function_instances(tf).values() if fn == i.id)
        timeout = f'${{local.functions["{instance.key}"].timeout_s}}'
        if d.body.get("ack_deadline_seconds") != timeout:
            problems.append(
                f"{d.label}: ack_deadline_seconds is {d.body.get('ack_deadline_seconds')!r}, not "
                f"{fn}'s timeout: a slow delivery would be pushed again while it still runs"
            )
    return problems


def _invokes_exactly(
    tf: Terraform, grants: list[tuple[str, str | None, str]], sa: str, function: str, who: str
) -> list[str]:
    member_expr = _sa_member_expr(sa)
    invoked = {fn for _, fn, member in grants if member == member_expr}
    if invoked != {function}:
        return [
            f"{who} ({sa}) may invoke {sorted(f or 'a non-function service' for f in invoked)}, "
            f"not exactly [{function!r}]"
        ]
    return []


def _sa_member_expr(sa: str) -> str:
    m = re.fullmatch(r"([A-Za-z0-9_-]+)\[([A-Za-z0-9_-]+)\]", sa)
    if m:
        return f'${{google_service_account.{m.group(1)}["{m.group(2)}"].member}}'
    return f"${{google_service_account.{sa}.member}}"


def check_rollback_chain(tf: Terraform) -> list[str]:
    """The topic named by ROLLBACK_TOPIC (breach_counter, checkpoint) is pushed to rollback, and
    the functions that publish to it hold roles/pubsub.publisher on exactly that topic."""
    problems: list[str] = []
    by_entry = function_by_entry(tf)
    fns = functions(tf)
    rollback_topics = set()
    for publisher in ("breach_counter", "checkpoint"):
        name = by_entry.get(publisher)
        if name is None:
            problems.append(f"no function with entry point {publisher}")
            continue
        env = env_of(fns[name])
        refs = references(env.get("ROLLBACK_TOPIC"), "google_pubsub_topic")
        if len(refs) != 1 or not expr(env.get("ROLLBACK_TOPIC")).endswith(".name"):
            problems.append(f"{publisher}: ROLLBACK_TOPIC is not a google_pubsub_topic's .name")
            continue
        topic = next(iter(refs))
        rollback_topics.add(topic)
        sa = sa_ref((block(fns[name], "service_config") or {}).get("service_account_email"), "email")
        publishers = [
            b
            for b in tf.of_type("google_pubsub_topic_iam_member").values()
            if references(b.get("topic"), "google_pubsub_topic") == {topic}
            and b.get("role") == "roles/pubsub.publisher"
            and sa is not None
            and b.get("member") == _sa_member_expr(sa)
        ]
        if not publishers:
            problems.append(f"{publisher}'s service account cannot publish to topic {topic}")
    if len(rollback_topics) > 1:
        problems.append(
            f"breach_counter and checkpoint publish to different topics {sorted(rollback_topics)}"
        )
    rollback = by_entry.get("rollback")
    if rollback is None:
        problems.append("no function with entry point rollback")
    elif rollback_topics:
        trigger_topics = {d.topic for d in push_deliveries(tf) if d.function == rollback}
        if trigger_topics != rollback_topics:
            problems.append(
                f"rollback's push subscriptions are on {sorted(t or '?' for t in trigger_topics)}, "
                f"but rollback requests go to {sorted(rollback_topics)}"
            )
    return problems


def check_notification_chain(tf: Terraform, env_by_function: Mapping[str, Iterable[str]]) -> list[str]:
    """Every function that reads NOTIFY_TOPIC sets it to one topic's .name and may publish there,
    and that topic is pushed to the function with entry point notify."""
    problems: list[str] = []
    by_entry = function_by_entry(tf)
    fns = functions(tf)
    grants = instances(tf, "google_pubsub_topic_iam_member")
    topics = set()
    for entry, reads in env_by_function.items():
        if "NOTIFY_TOPIC" not in reads or entry not in by_entry:
            continue
        name = by_entry[entry]
        value = env_of(fns[name]).get("NOTIFY_TOPIC")
        refs = references(value, "google_pubsub_topic")
        if len(refs) != 1 or not expr(value).endswith(".name"):
            problems.append(f"{entry}: NOTIFY_TOPIC is not one google_pubsub_topic's .name")
            continue
        topic = next(iter(refs))
        topics.add(topic)
        sa = sa_ref((block(fns[name], "service_config") or {}).get("service_account_email"), "email")
        if not any(
            references(g.body.get("topic"), "google_pubsub_topic") == {topic}
            and g.body.get("role") == "roles/pubsub.publisher"
            and sa is not None
            and g.body.get("member") == _sa_member_expr(sa)
            for g in grants
        ):
            problems.append(f"{entry} cannot publish to the notifications topic {topic}")
    notify = by_entry.get("notify")
    pushed = {d.topic for d in push_deliveries(tf) if d.function == notify}
    if notify is None:
        problems.append("no function with entry point notify")
    elif topics and pushed != topics:
        problems.append(
            f"notify is pushed {sorted(t or '?' for t in pushed)}, notifications go to {sorted(topics)}"
        )
    return problems


def check_monitoring_can_publish(tf: Terraform) -> list[str]:
    """Cloud Monitoring's notification service agent may publish to the channel's topic."""
    problems: list[str] = []
    agent = tf.locals.get("monitoring_notification_agent", "")
    if not MONITORING_AGENT_RE.match(str(agent)):
        problems.append(
            f"local.monitoring_notification_agent is {agent!r}, not the gcp-sa-monitoring-notification agent"
        )
    channel_topics = set()
    for channel in tf.of_type("google_monitoring_notification_channel").values():
        channel_topics |= references((channel.get("labels") or {}).get("topic"), "google_pubsub_topic")
    for topic in sorted(channel_topics):
        ok = any(
            references(b.get("topic"), "google_pubsub_topic") == {topic}
            and b.get("role") == "roles/pubsub.publisher"
            and b.get("member") == "${local.monitoring_notification_agent}"
            for b in tf.of_type("google_pubsub_topic_iam_member").values()
        )
        if not ok:
            problems.append(
                f"the monitoring notification agent has no roles/pubsub.publisher on topic {topic}"
            )
    if not channel_topics:
        problems.append("no notification channel publishes to a topic")
    return problems


def check_monitoring_agent_exists_first(tf: Terraform, min_wait_s: float) -> list[str]:
    """Every grant to Cloud Monitoring's notification service agent depends on a time_sleep of
    at least min_wait_s that starts after a Pub/Sub notification channel exists: the agent is
    created asynchronously after the project's first such channel, and a grant to a principal
    that does not exist yet is refused."""
    problems: list[str] = []
    channels = {
        f"${{google_monitoring_notification_channel.{name}}}"
        for name, body in tf.of_type("google_monitoring_notification_channel").items()
        if body.get("type") == "pubsub"
    }
    waits = set()
    for name, body in tf.of_type("time_sleep").items():
        if channels & set(body.get("depends_on") or []):
            seconds = duration_s(body.get("create_duration"))
            if seconds is None or seconds < min_wait_s:
                problems.append(
                    f"time_sleep.{name} waits {body.get('create_duration')!r} for the Monitoring agent, "
                    f"less than {min_wait_s:g}s"
                )
            waits.add(f"${{time_sleep.{name}}}")
    if not waits:
        problems.append("no time_sleep waits for the Monitoring agent after its notification channel")
    grants = 0
    for rtype, name, body in tf.all_resources():
        if "_iam_" not in rtype or body.get("member") != "${local.monitoring_notification_agent}":
            continue
        grants += 1
        if not waits & set(body.get("depends_on") or []):
            problems.append(
                f"{rtype}.{name} grants to the Monitoring notification agent without waiting for it "
                "(depends_on a time_sleep after the notification channel)"
            )
    if not grants:
        problems.append("nothing is granted to the Monitoring notification agent")
    return problems


TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"
TOKEN_CREATOR_VARIABLE = "grant_pubsub_agent_token_creator"


def check_pubsub_agent_token_creator(tf: Terraform) -> list[str]:
    """Opt-in (var.grant_pubsub_agent_token_creator, a bool that defaults to false): Pub/Sub
    service agents enabled on or before 8 April 2021 need roles/iam.serviceAccountTokenCreator
    to sign authenticated pushes. Switched on, the agent gets it on exactly the identities that
    sign the push subscriptions' tokens; switched off, nobody gets it."""
    problems: list[str] = []
    variable = tf.variables.get(TOKEN_CREATOR_VARIABLE)
    if variable is None:
        return [
            f"no variable {TOKEN_CREATOR_VARIABLE}: old projects cannot opt in to the Token Creator grant"
        ]
    if variable.get("type") not in ("bool", "${bool}") or variable.get("default") is not False:
        problems.append(
            f"var.{TOKEN_CREATOR_VARIABLE} must be a bool defaulting to false "
            f"(type {variable.get('type')!r}, default {variable.get('default')!r})"
        )
    if "April 2021" not in str(variable.get("description", "")):
        problems.append(f"var.{TOKEN_CREATOR_VARIABLE}'s description does not say which projects need it")
    triggers = {d.pusher: d.function for d in push_deliveries(tf) if d.pusher and d.function}

    def grants(on: bool) -> list[Instance]:
        return [
            i
            for i in instances(
                tf, "google_service_account_iam_member", {**CHECK_VARIABLES, TOKEN_CREATOR_VARIABLE: on}
            )
            if i.body.get("role") == TOKEN_CREATOR
        ]

    granted = set()
    for inst in grants(True):
        if inst.body.get("member") != "${local.pubsub_service_agent}":
            problems.append(
                f"{inst.label}: Token Creator for {inst.body.get('member')!r}, not the Pub/Sub service agent"
            )
        sa = sa_ref(inst.body.get("service_account_id"), "name")
        if sa not in triggers:
            problems.append(
                f"{inst.label}: Token Creator on {sa or inst.body.get('service_account_id')!r}, "
                "not a push identity"
            )
        granted.add(sa)
    for sa, fn in sorted(triggers.items()):
        if sa not in granted:
            problems.append(
                f"the push identity {sa} of {fn}: the Pub/Sub service agent gets no Token Creator on it "
                f"with var.{TOKEN_CREATOR_VARIABLE} = true"
            )
    for inst in grants(False):
        problems.append(f"{inst.label}: Token Creator granted with var.{TOKEN_CREATOR_VARIABLE} = false")
    return problems


def check_dead_letters(tf: Terraform) -> list[str]:
    """Each push subscription dead-letters after var.dead_letter_max_delivery_attempts to a topic
    of its own that has a subscription keeping what arrives, that Pub/Sub's service agent may
    publish to; the agent may also acknowledge on the push subscription (it does when it
    forwards a message)."""
    problems: list[str] = []
    if not PUBSUB_AGENT_RE.match(str(tf.locals.get("pubsub_service_agent", ""))):
        problems.append("local.pubsub_service_agent is not the gcp-sa-pubsub service agent")
    deliveries = push_deliveries(tf)
    if not deliveries:
        problems.append("no push subscription at all")
    subscribers = instances(tf, "google_pubsub_subscription_iam_member")
    for d in deliveries:
        policy = block(d.body, "dead_letter_policy") or {}
        if d.dead_letter_topic is None:
            problems.append(f"{d.label}: no dead_letter_policy with one google_pubsub_topic's .id")
            continue
        if policy.get("max_delivery_attempts") != "${var.dead_letter_max_delivery_attempts}":
            problems.append(f"{d.label}: max_delivery_attempts is not var.dead_letter_max_delivery_attempts")
        if d.dead_letter_topic == d.topic:
            problems.append(f"{d.label}: dead-letter topic is its own topic")
        if not any(
            references(s.get("topic"), "google_pubsub_topic") == {d.dead_letter_topic}
            and not block(s, "push_config")
            for s in tf.of_type("google_pubsub_subscription").values()
        ):
            problems.append(
                f"dead-letter topic {d.dead_letter_topic} has no subscription: dead letters would be dropped"
            )
        if not any(
            references(b.get("topic"), "google_pubsub_topic") == {d.dead_letter_topic}
            and b.get("role") == "roles/pubsub.publisher"
            and b.get("member") == "${local.pubsub_service_agent}"
            for b in tf.of_type("google_pubsub_topic_iam_member").values()
        ):
            problems.append(
                f"Pub/Sub's service agent cannot publish to dead-letter topic {d.dead_letter_topic}"
            )
        if not any(
            i.body.get("subscription") == f"${{{d.address}.name}}"
            and i.body.get("role") == "roles/pubsub.subscriber"
            and i.body.get("member") == "${local.pubsub_service_agent}"
            for i in subscribers
        ):
            problems.append(
                f"Pub/Sub's service agent has no roles/pubsub.subscriber on {d.label}: "
                "it cannot forward a message to the dead-letter topic"
            )
    return problems


def check_scheduler_jobs(tf: Terraform, expected: Mapping[str, str]) -> list[str]:
    """expected: job resource name -> entry point it must call. Each job: POST to that
    function's URI with an OIDC token (audience = that URI) of a service account that holds
    run.invoker on exactly that function; schedule and time zone from the policy file."""
    problems: list[str] = []
    jobs = by_id(tf, "google_cloud_scheduler_job")
    by_entry = function_by_entry(tf)
    grants = invoker_grants(tf)
    if set(jobs) != set(expected):
        problems.append(f"scheduler jobs are {sorted(jobs)}, expected {sorted(expected)}")
    for job_name, entry in expected.items():
        job = jobs.get(job_name)
        fn = by_entry.get(entry)
        if job is None or fn is None:
            continue
        target = block(job, "http_target")
        if not target:
            problems.append(f"job {job_name} has no http_target")
            continue
        if function_ref(tf, target.get("uri"), "service_config[0].uri") != fn:
            problems.append(f"job {job_name} does not call function {fn} (uri = {target.get('uri')!r})")
        oidc = block(target, "oidc_token")
        if not oidc:
            problems.append(f"job {job_name} sends no OIDC token")
            continue
        if function_ref(tf, oidc.get("audience"), "service_config[0].uri") != fn:
            problems.append(f"job {job_name}: OIDC audience is not function {fn}'s URI")
        sa = sa_ref(oidc.get("service_account_email"), "email")
        if sa is None:
            problems.append(
                f"job {job_name}: OIDC service account is not a google_service_account of this config"
            )
            continue
        problems.extend(_invokes_exactly(tf, grants, sa, fn, f"job {job_name}"))
        policy_key = {"checkpoint": "checkpoint_cfg", "load_test": "load_test_cfg"}.get(entry)
        if policy_key:
            for attr in ("schedule", "time_zone"):
                if expr(job.get(attr)) != f"local.{policy_key}.{attr}":
                    problems.append(f"job {job_name}: {attr} is not local.{policy_key}.{attr} (policy file)")
    return problems


def check_scheduler_bodies(tf: Terraform, accepted: Mapping[str, Iterable[str]]) -> list[str]:
    """accepted: entry point -> the body keys its HTTP handler takes. Each scheduler job sends
    Content-Type application/json and a body that decodes to a JSON object with only those keys
    (string values), so the handler does not answer 400 to every scheduled run."""
    problems: list[str] = []
    fns = functions(tf)
    ev = Evaluator(tf)
    for job_name, job in by_id(tf, "google_cloud_scheduler_job").items():
        target = block(job, "http_target") or {}
        fn = function_ref(tf, target.get("uri"), "service_config[0].uri")
        entry = entry_point(fns[fn]) if fn in fns else None
        if entry not in accepted:
            problems.append(f"job {job_name} calls {fn!r}, whose accepted body is not known")
            continue
        headers = target.get("headers") if isinstance(target.get("headers"), dict) else {}
        if headers.get("Content-Type") != "application/json":
            problems.append(
                f"job {job_name}: Content-Type is {headers.get('Content-Type')!r}, not application/json"
            )
        if "body" not in target:
            problems.append(f"job {job_name} sends no body")
            continue
        try:
            body = json.loads(base64.b64decode(ev.value(target["body"]), validate=True))
        except (Unevaluable, ValueError, TypeError) as exc:
            problems.append(f"job {job_name}: body is not base64 JSON ({exc})")
            continue
        if not isinstance(body, dict):
            problems.append(f"job {job_name}: body {body!r} is not a JSON object")
            continue
        unknown = sorted(set(body) - set(accepted[entry]))
        if unknown:
            problems.append(
                f"job {job_name}: body key(s) {unknown} are refused by {entry} "
                f"(accepts {{}} or keys {sorted(accepted[entry])})"
            )
        not_str = sorted(k for k, v in body.items() if k not in unknown and not isinstance(v, str))
        if not_str:
            problems.append(f"job {job_name}: body value(s) of {not_str} are not strings")
    return problems


def check_entry_points(tf: Terraform, defined: set[str], expected: Iterable[str]) -> list[str]:
    problems: list[str] = []
    by_entry = function_by_entry(tf)
    for name, body in functions(tf).items():
        ep = entry_point(body)
        if ep not in defined:
            problems.append(
                f"function {name}: entry_point {ep!r} is not a top-level function of functions/main.py"
            )
    missing = set(expected) - set(by_entry)
    if missing:
        problems.append(f"no function deployed for entry point(s) {sorted(missing)}")
    return problems


def check_environment(
    tf: Terraform,
    env_defaults: Mapping[str, str | None],
    env_by_function: Mapping[str, Iterable[str]],
    *,
    local_only: Iterable[str] = ("CLOUD_RUN_API_ENDPOINT", "MONITORING_API_ENDPOINT"),
    always_set: Iterable[str] = ("ROLLBACK_TOPIC", "DECISION_RETENTION_DAYS", "NOTIFY_TOPIC"),
    secret_only: Iterable[str] = ("CHAT_WEBHOOK_URL",),
) -> list[str]:
    problems: list[str] = []
    fns = functions(tf)
    for entry, name in function_by_entry(tf).items():
        reads = set(env_by_function.get(entry, ()))
        if not reads:
            problems.append(f"function {name}: entry point {entry} is not in ENV_BY_FUNCTION")
            continue
        env = env_of(fns[name])
        secrets = secret_env_keys(fns[name])
        required = {v for v in reads if env_defaults.get(v, "") is None} | (reads & set(always_set))
        for var in sorted(required - set(env)):
            problems.append(f"function {name}: {var} is read but not set")
        for var in sorted(set(env) | secrets):
            if var not in env_defaults:
                problems.append(f"function {name}: {var} is not a variable of shared/config.py")
            elif var not in reads:
                problems.append(f"function {name}: sets {var}, which {entry} does not read")
        for var in sorted(set(local_only) & (set(env) | secrets)):
            problems.append(f"function {name}: {var} is for the local stand-ins only and must not be set")
        for var in sorted(set(secret_only) & set(env)):
            problems.append(f"function {name}: {var} must come from Secret Manager, not a plain variable")
        for var in sorted(set(secret_only) & reads - secrets):
            problems.append(f"function {name}: {var} is read but no secret_environment_variables provides it")
    return problems


def check_expiry(
    tf: Terraform, collection_groups: Iterable[str], field_name: str, marker_ttl_s: float
) -> list[str]:
    """A Firestore TTL policy on `field_name` for each collection group the code writes it in,
    and no Pub/Sub topic or subscription keeps a message longer than a dedupe marker lives (a
    redelivery after its marker expired would be carried out twice)."""
    problems: list[str] = []
    fields = instances(tf, "google_firestore_field")
    for group in collection_groups:
        mine = [f for f in fields if f.body.get("collection") == group and f.body.get("field") == field_name]
        if len(mine) != 1:
            problems.append(f"collection group {group}: {len(mine)} TTL fields on {field_name}, expected 1")
        elif not isinstance(mine[0].body.get("ttl_config"), list | dict):
            problems.append(f"{mine[0].label}: no ttl_config block, nothing would expire")
    for rtype in ("google_pubsub_topic", "google_pubsub_subscription"):
        for inst in instances(tf, rtype):
            retention = duration_s(inst.body.get("message_retention_duration"))
            if retention is not None and retention >= marker_ttl_s:
                problems.append(
                    f"{inst.label} keeps messages {inst.body.get('message_retention_duration')}, "
                    f"not less than a dedupe marker lives ({marker_ttl_s:g}s)"
                )
    return problems


# The oldest google provider that has every argument the configuration uses:
# alert_strategy.notification_prompts first appears in 6.9.0.
GOOGLE_PROVIDER_FLOOR = (6, 9)


def _version_bounds(constraint: str) -> tuple[tuple[int, ...] | None, bool]:
    """(the lowest version a constraint admits, whether it has an upper bound)."""
    lower, upper = None, False
    for part in (p.strip() for p in constraint.split(",")):
        m = re.fullmatch(r"(>=|>|<=|<|~>|=)?\s*(\d+(?:\.\d+)*)", part)
        if not m:
            continue
        op, version = m.group(1) or "=", tuple(int(n) for n in m.group(2).split("."))
        if op in (">=", ">", "~>", "="):
            lower = version
        if op in ("<", "<=", "~>", "="):
            upper = True
    return lower, upper


def check_provider_pins(tf: Terraform) -> list[str]:
    """Every provider is pinned from below and above; google from GOOGLE_PROVIDER_FLOOR on
    (an older one fails at plan on an argument it does not know)."""
    problems: list[str] = []
    for name, spec in tf.required_providers.items():
        constraint = str((spec or {}).get("version", "")) if isinstance(spec, dict) else ""
        lower, upper = _version_bounds(constraint)
        if lower is None or not upper:
            problems.append(f"provider {name}: version {constraint!r} is not bounded below and above")
        if name == "google" and (lower is None or lower[:2] < GOOGLE_PROVIDER_FLOOR):
            problems.append(
                f"provider google: version {constraint!r} admits versions before "
                f"{'.'.join(map(str, GOOGLE_PROVIDER_FLOOR))}, which lack alert_strategy.notification_prompts"
            )
    if "google" not in tf.required_providers:
        problems.append("the google provider is not in required_providers")
    return problems


def check_source_lifecycle(tf: Terraform) -> list[str]:
    """The source bucket deletes only noncurrent (archived) versions: an age rule on live
    objects would delete the zip the functions were built from, and every later apply would
    upload it again."""
    problems: list[str] = []
    for inst in instances(tf, "google_storage_bucket"):
        for rule in blocks(inst.body, "lifecycle_rule"):
            condition = block(rule, "condition") or {}
            if condition.get("with_state") != "ARCHIVED":
                problems.append(
                    f"{inst.label}: a lifecycle rule applies to live objects (with_state is not ARCHIVED)"
                )
            if "age" in condition:
                problems.append(
                    f"{inst.label}: a lifecycle rule counts age, not time since the version was replaced"
                )
    return problems


def check_oncall_commands(tf: Terraform) -> list[str]:
    """What the on-call is told to run needs only what the on-call is granted: run.invoker on
    emergency_rollback (curl with an identity token) and publisher on the rollback topic.
    `gcloud functions call` would also need cloudfunctions.functions.get."""
    problems: list[str] = []
    for name, output in tf.outputs.items():
        text = str(output.get("value", ""))
        if "gcloud functions call" in text:
            problems.append(f"output {name} prints gcloud functions call, which the on-call may not run")
    commands = str((tf.outputs.get("emergency_rollback_commands") or {}).get("value", ""))
    if commands.count("curl -sS -X POST") != 2:
        problems.append(
            "output emergency_rollback_commands does not print the dry run and the rollback as curl"
        )
    return problems


def check_load_test_limits(tf: Terraform) -> list[str]:
    """load_test's FUNCTION_TIMEOUT_S / FUNCTION_MEMORY_MB are its own service_config values."""
    name = function_by_entry(tf).get("load_test")
    if name is None:
        return ["no function with entry point load_test"]
    body = functions(tf)[name]
    service = block(body, "service_config") or {}
    env = env_of(body)
    problems = []
    if not is_expr(env.get("FUNCTION_TIMEOUT_S")) or env.get("FUNCTION_TIMEOUT_S") != service.get(
        "timeout_seconds"
    ):
        problems.append(
            f"load_test FUNCTION_TIMEOUT_S {env.get('FUNCTION_TIMEOUT_S')!r} is not its timeout_seconds "
            f"{service.get('timeout_seconds')!r}"
        )
    mem = env.get("FUNCTION_MEMORY_MB")
    if not is_expr(mem) or service.get("available_memory") != f"{mem}Mi":
        problems.append(
            f"load_test FUNCTION_MEMORY_MB {mem!r} is not its available_memory "
            f"{service.get('available_memory')!r} in Mi"
        )
    return problems


def check_source_archive(tf: Terraform) -> list[str]:
    """main.py and requirements.txt at the archive root, shared/ beside them (no __pycache__),
    and every function built from that archive."""
    problems: list[str] = []
    archive = tf.data.get("archive_file", {}).get("source")
    if not archive:
        return ['no data "archive_file" "source"']
    files = {b.get("filename"): b.get("content") for b in blocks(archive, "source")}
    if files.get("main.py") != '${file("${path.module}/../functions/main.py")}':
        problems.append("the archive's main.py is not functions/main.py")
    if files.get("requirements.txt") != '${file("${path.module}/../requirements.txt")}':
        problems.append("the archive's requirements.txt is not the repository's requirements.txt")
    shared = [
        block(d, "content")
        for d in dynamic_blocks(archive, "source")
        if "shared_source_files" in str(d.get("for_each"))
    ]
    if len(shared) != 1 or shared[0] is None or shared[0].get("filename") != "shared/${source.value}":
        problems.append(
            "the archive has no dynamic source block putting local.shared_source_files under shared/"
        )
    listing = str(tf.locals.get("shared_source_files", ""))
    if '/../shared"' not in listing or "__pycache__" not in listing:
        problems.append("local.shared_source_files is not shared/ without __pycache__")
    obj = tf.resource("google_storage_bucket_object", "source") or {}
    if "data.archive_file.source.output_path" not in str(obj.get("source")):
        problems.append("the uploaded object is not the archive")
    if "data.archive_file.source.output_" not in str(obj.get("name")):
        problems.append("the object name does not change with the archive's content")
    for name, body in functions(tf).items():
        storage = block(block(block(body, "build_config"), "source"), "storage_source") or {}
        if storage.get("object") != "${google_storage_bucket_object.source.name}":
            problems.append(f"function {name} is not built from the uploaded archive")
    return problems


def check_no_public_access(tf: Terraform) -> list[str]:
    problems = []
    for rtype, name, body in tf.all_resources():
        for s in strings(body):
            for public in PUBLIC_MEMBERS:
                if public in s:
                    problems.append(f"{rtype}.{name} mentions {public}")
    for fname, text in tf.texts.items():
        if fname == "variables.tf":
            continue  # the validation messages name them to refuse them
        for public in PUBLIC_MEMBERS:
            if public in text and not any(public in p for p in problems):
                problems.append(f"{fname} mentions {public}")
    return problems


CUSTOM_ROLE = "custom/"  # "custom/NAME" in a role list: local.custom_roles[NAME] (iam.tf)
CUSTOM_ROLE_EXPR = (
    'startswith(each.value.role, "custom/") ? google_project_iam_custom_role.canary_guard'
    '[trimprefix(each.value.role, "custom/")].name : each.value.role'
)


def granted_roles(tf: Terraform) -> list[tuple[str, str, str]]:
    """(resource type, resource name, role) of every IAM grant, for_each roles resolved from
    the literal locals the for_each is built from."""
    out = []
    for rtype, name, body in tf.all_resources():
        if "_iam_" not in rtype:
            continue
        role = body.get("role")
        if isinstance(role, str) and not is_expr(role):
            out.append((rtype, name, role))
            continue
        for r in _roles_from_locals(tf, body.get("for_each")):
            out.append((rtype, name, r))
        if isinstance(role, str) and is_expr(role) and not _roles_from_locals(tf, body.get("for_each")):
            out.append((rtype, name, role))  # unresolved: reported by check_roles
    return out


def _roles_from_locals(tf: Terraform, for_each: Any, seen: set[str] | None = None) -> list[str]:
    seen = seen if seen is not None else set()
    roles: list[str] = []
    for local in sorted(references(for_each, "local")):
        if local in seen or local not in tf.locals:
            continue
        seen.add(local)
        value = tf.locals[local]
        roles.extend(s for s in strings(value) if s.startswith(("roles/", CUSTOM_ROLE)))
        roles.extend(_roles_from_locals(tf, value, seen))
    return roles


def _with_locals(tf: Terraform, text: str) -> str:
    """text with each ${local.NAME} whose local is a string replaced by that string as written."""

    def local(m: re.Match[str]) -> str:
        value = tf.locals.get(m.group(1))
        return value if isinstance(value, str) else m.group(0)

    return re.sub(r"\$\{local\.([A-Za-z0-9_]+)\}", local, text)


def check_roles(
    tf: Terraform,
    allowed: Iterable[str],
    allowed_project_level: Iterable[str],
    conditional_project_level: Mapping[str, str] | None = None,
) -> list[str]:
    """conditional_project_level: role -> text its project grant's condition must contain, for
    the roles that may be granted on the project only under an IAM condition naming resources
    that have no grant of their own before they exist (e.g. Cloud Functions' staging bucket)."""
    problems: list[str] = []
    allowed = set(allowed)
    allowed_project_level = set(allowed_project_level)
    conditional_project_level = dict(conditional_project_level or {})
    for rtype in IAM_TYPES_AUTHORITATIVE:
        for name in tf.of_type(rtype):
            problems.append(f"{rtype}.{name}: authoritative project IAM is never used")
    for rtype, name, role in granted_roles(tf):
        if is_expr(role):
            problems.append(f"{rtype}.{name}: role {role} cannot be resolved to a literal")
        elif role in BASIC_ROLES:
            problems.append(f"{rtype}.{name}: basic role {role}")
        elif role not in allowed:
            problems.append(f"{rtype}.{name}: role {role} is not in the allowed list")
        elif rtype.startswith("google_project_iam") and role not in allowed_project_level:
            condition = block(tf.resource(rtype, name), "condition") or {}
            needle = conditional_project_level.get(role)
            if needle is None or needle not in _with_locals(tf, str(condition.get("expression", ""))):
                problems.append(f"{rtype}.{name}: {role} granted on the whole project")
    # serviceAccountUser only on the watched services' runtime accounts: each of local.act_as_grants,
    # made from local.target_runtime_service_accounts (main.tf).
    act_as = str(tf.locals.get("act_as_grants", ""))
    for name, body in tf.of_type("google_service_account_iam_member").items():
        on_runtime_accounts = (
            expr(body.get("for_each")) == "local.act_as_grants"
            and "each.value.account" in str(body.get("service_account_id"))
            and "values(local.target_runtime_service_accounts)" in act_as
        )
        if body.get("role") == "roles/iam.serviceAccountUser" and not on_runtime_accounts:
            problems.append(
                f"google_service_account_iam_member.{name}: serviceAccountUser on another account"
            )
    for name, body in tf.of_type("google_service_account_iam_member").items():
        if body.get("role") == TOKEN_CREATOR and body.get("member") != "${local.pubsub_service_agent}":
            problems.append(
                f"google_service_account_iam_member.{name}: serviceAccountTokenCreator for someone other "
                "than the Pub/Sub service agent"
            )
    return problems


def check_custom_roles(tf: Terraform, allowed_permissions: Mapping[str, str]) -> list[str]:
    """The custom roles (local.custom_roles, one google_project_iam_custom_role per entry) hold
    only permissions in `allowed_permissions` (permission -> the code that uses it); every
    "custom/NAME" granted names one of them, through the one expression that turns it into the
    role's name; each is granted somewhere."""
    problems: list[str] = []
    defined = tf.locals.get("custom_roles")
    if not isinstance(defined, dict) or not defined:
        return ["no local.custom_roles: the functions would need predefined Cloud Run roles"]
    resources = tf.of_type("google_project_iam_custom_role")
    if [(n, b.get("for_each"), b.get("permissions")) for n, b in resources.items()] != [
        ("canary_guard", "${local.custom_roles}", "${each.value.permissions}")
    ]:
        problems.append(
            "the custom roles are not exactly one google_project_iam_custom_role over local.custom_roles"
        )
    for name, role in defined.items():
        for permission in role.get("permissions") or []:
            if permission not in allowed_permissions:
                problems.append(f"custom role {name}: permission {permission} is not one the code uses")
    used = set()
    for rtype, name, role in granted_roles(tf):
        if not role.startswith(CUSTOM_ROLE):
            continue
        used.add(role.removeprefix(CUSTOM_ROLE))
        if role.removeprefix(CUSTOM_ROLE) not in defined:
            problems.append(f"{rtype}.{name}: {role} is not in local.custom_roles")
        if tf.resource(rtype, name).get("role") != "${" + CUSTOM_ROLE_EXPR + "}":
            problems.append(f"{rtype}.{name}: its role does not turn custom/NAME into the custom role")
    for name in sorted(set(defined) - used):
        problems.append(f"custom role {name} is granted to nobody")
    return problems


STAGED_SOURCE_PREFIX = "projects/_/buckets/gcf-v2-sources-${local.project_number}-${var.region}/"
STORAGE_OBJECT = 'resource.type == "storage.googleapis.com/Object"'


def check_build_identity(tf: Terraform, project_roles: Iterable[str]) -> list[str]:
    """Every function is built by google_service_account.build (build_config.service_account
    = its .id, projects/P/serviceAccounts/EMAIL), not by Cloud Build's default account, which
    new projects may leave without the permissions a build needs. That account holds
    `project_roles` on the project, roles/storage.objectViewer on the bucket of the uploaded
    source and, under a condition, on the objects of gcf-v2-sources-NUMBER-REGION only (where
    Cloud Functions stages the source that Cloud Build fetches); every function depends on
    those grants, so that no build starts before them."""
    problems: list[str] = []
    sa = tf.resource("google_service_account", "build")
    if sa is None:
        return ['no google_service_account "build": the functions would build as a default account']
    if sa.get("account_id") != "${var.prefix}-build":
        problems.append(
            f"google_service_account.build: account_id {sa.get('account_id')!r}, not PREFIX-build"
        )
    grants = [
        inst
        for rtype in ("google_project_iam_member", "google_storage_bucket_iam_member")
        for inst in instances(tf, rtype)
        if inst.body.get("member") == "${google_service_account.build.member}"
    ]
    on_project = [i for i in grants if i.rtype == "google_project_iam_member"]
    unconditional = {i.body.get("role") for i in on_project if not block(i.body, "condition")}
    for role in sorted(set(project_roles) - unconditional):
        problems.append(f"the build service account lacks {role} on the project")
    for role in sorted(unconditional - set(project_roles)):
        problems.append(f"the build service account holds {role} on the whole project")
    if not any(
        i.rtype == "google_storage_bucket_iam_member"
        and i.body.get("role") == "roles/storage.objectViewer"
        and i.body.get("bucket") == "${google_storage_bucket.source.name}"
        for i in grants
    ):
        problems.append("the build service account cannot read the source bucket (storage.objectViewer)")
    staged = False
    for inst in on_project:
        condition = block(inst.body, "condition")
        if not condition:
            continue
        expression = str(condition.get("expression", ""))
        prefix = str(tf.locals.get("build_staged_source_prefix"))
        if inst.body.get("role") != "roles/storage.objectViewer":
            problems.append(
                f"{inst.label}: {inst.body.get('role')} under a condition, expected storage.objectViewer"
            )
        elif (
            STORAGE_OBJECT in expression
            and 'resource.name.startsWith("${local.build_staged_source_prefix}")' in expression
            and prefix == STAGED_SOURCE_PREFIX
            and "||" not in expression
        ):
            staged = True
        else:
            problems.append(
                f"{inst.label}: condition {expression!r} (prefix {prefix!r}) is not only the objects "
                f"under {STAGED_SOURCE_PREFIX}"
            )
    if not staged:
        problems.append(
            "the build service account cannot read the source staged in gcf-v2-sources-NUMBER-REGION "
            "(storage.objectViewer under a condition)"
        )
    needed = sorted({f"${{{i.rtype}.{i.name}}}" for i in grants})
    for name, inst in function_instances(tf).items():
        account = (block(inst.body, "build_config") or {}).get("service_account")
        if account is None:
            problems.append(f"function {name} builds as Cloud Build's default service account")
        elif account != "${google_service_account.build.id}":
            problems.append(f"function {name}: build_config.service_account {account!r} is not build's .id")
        depends = set(inst.body.get("depends_on") or [])
        for grant in needed:
            if grant not in depends:
                problems.append(
                    f"function {name} does not depend on {grant[2:-1]}: its build may start first"
                )
    return problems


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_SECONDS = {"h": 3600, "m": 60, "s": 1}


def duration_s(value: Any) -> float | None:
    """A Go duration such as "120s" or "2m30s" in seconds; None if it is not one."""
    if not isinstance(value, str) or not re.fullmatch(r"(?:\d+(?:\.\d+)?[hms])+", value):
        return None
    return sum(float(n) * _SECONDS[unit] for n, unit in _DURATION.findall(value))


def check_first_apply_waits(tf: Terraform, min_seconds: float) -> list[str]:
    """A time_sleep of at least min_seconds starts after google_project_service.apis, and every
    function depends on it: Cloud Functions' and Cloud Build's agents, and new grants to the
    build identity, take minutes to be in force, and a build started before fails. The time
    provider is required from hashicorp/time."""
    problems: list[str] = []
    time = tf.required_providers.get("time")
    if not isinstance(time, dict) or time.get("source") != "hashicorp/time":
        problems.append("versions.tf does not require the time provider from hashicorp/time")
    waits = []
    for name, body in tf.of_type("time_sleep").items():
        if "${google_project_service.apis}" not in (body.get("depends_on") or []):
            continue
        seconds = duration_s(body.get("create_duration"))
        if seconds is None or seconds < min_seconds:
            problems.append(
                f"time_sleep.{name} waits {body.get('create_duration')!r} after the APIs, "
                f"less than {min_seconds:g}s"
            )
        else:
            waits.append(f"${{time_sleep.{name}}}")
    if not waits:
        problems.append("no time_sleep waits after google_project_service.apis")
        return problems
    for name, inst in function_instances(tf).items():
        if not set(waits) & set(inst.body.get("depends_on") or []):
            problems.append(
                f"function {name} does not wait for {' or '.join(w[2:-1] for w in waits)}: "
                "its build may start before the grants it needs are in force"
            )
    return problems


def check_function_identities(tf: Terraform) -> list[str]:
    """One service account per function, not shared with another function or a caller."""
    problems: list[str] = []
    used: dict[str, str] = {}
    callers = set()
    callers |= {d.pusher for d in push_deliveries(tf) if d.pusher}
    for job in by_id(tf, "google_cloud_scheduler_job").values():
        oidc = block(block(job, "http_target"), "oidc_token")
        if oidc and (sa := sa_ref(oidc.get("service_account_email"), "email")):
            callers.add(sa)
    for name, body in functions(tf).items():
        sa = sa_ref((block(body, "service_config") or {}).get("service_account_email"), "email")
        if sa is None:
            problems.append(f"function {name} runs as a default service account")
            continue
        if sa in used:
            problems.append(f"functions {used[sa]} and {name} share service account {sa}")
        if sa in callers:
            problems.append(f"function {name}'s runtime account {sa} is also a caller identity")
        used[sa] = name
        m = re.fullmatch(r"function\[(.+)\]", sa)
        if m and m.group(1) != entry_point(body):
            problems.append(f"function {name} runs as {sa}, the identity of {m.group(1)}")
    return problems


def check_emergency_access(tf: Terraform) -> list[str]:
    """emergency_rollback: invokers come only from var.emergency_rollback_members; it is the
    only function reachable from outside Google's network."""
    problems: list[str] = []
    fn = function_by_entry(tf).get("emergency_rollback")
    if fn is None:
        return ["no function with entry point emergency_rollback"]
    grants = [inst for inst, invoked, _ in invoker_grants(tf) if invoked == fn]
    if not grants:
        problems.append("nobody may invoke emergency_rollback")
    for inst in grants:
        if (
            inst.key is not None
            or inst.body.get("for_each") != "${toset(var.emergency_rollback_members)}"
            or inst.body.get("member") != "${each.value}"
        ):
            problems.append(
                f"{inst.label}: emergency_rollback invoker not taken from var.emergency_rollback_members"
            )
    variable = tf.variables.get("emergency_rollback_members", {})
    if "default" in variable:
        problems.append("var.emergency_rollback_members has a default: the members must be chosen explicitly")
    if not variable.get("validation"):
        problems.append("var.emergency_rollback_members has no validation")
    for name, body in functions(tf).items():
        ingress = (block(body, "service_config") or {}).get("ingress_settings")
        want = "ALLOW_ALL" if name == fn else "ALLOW_INTERNAL_ONLY"
        if ingress != want:
            problems.append(f"function {name}: ingress_settings {ingress!r}, expected {want}")
    return problems


def check_variables_documented(tf: Terraform, must_validate: Iterable[str]) -> list[str]:
    problems = []
    for name, body in tf.variables.items():
        if not body.get("description"):
            problems.append(f"variable {name} has no description")
        if not body.get("type"):
            problems.append(f"variable {name} has no type")
    for name in must_validate:
        if not tf.variables.get(name, {}).get("validation"):
            problems.append(f"variable {name} has no validation block")
    for name, body in tf.outputs.items():
        if not body.get("description"):
            problems.append(f"output {name} has no description")
    return problems


def check_services_guarded(tf: Terraform, services: Mapping[str, Mapping[str, str]]) -> list[str]:
    """With var.services = `services`: each service is in one alert policy of every metric rule,
    gets every function's role on it, an uptime check and canary_down policy when it has a tag
    URL, its own load test job, its place in every function's CANARY_SERVICES; and no two
    instances of a resource type share a name."""
    from dataclasses import replace

    problems: list[str] = []
    tf = replace(tf, evaluated_locals=evaluate_services(tf, services))
    ev = Evaluator(tf, {**CHECK_VARIABLES, "services": dict(services)})

    def value(raw: Any) -> Any:
        try:
            return ev.value(raw)
        except Unevaluable as exc:
            return f"<{exc}>"

    fullnames = {
        name: f"projects/{CHECK_PROJECT}/locations/{s.get('location') or CHECK_REGION}/services/{name}"
        for name, s in services.items()
    }
    rules = sorted(value("${local.alerting.metric_conditions}") or {})
    policies = [inst.body for inst in instances(tf, "google_monitoring_alert_policy", ev.variables)]
    for name in services:
        for rule in rules:
            covering = [
                p
                for p in policies
                if (p.get("user_labels") or {}).get("canary_rule") == rule
                and f'"{name}"'
                in str(value((block(block(p, "conditions"), "condition_threshold") or {}).get("filter")))
            ]
            if len(covering) != 1:
                problems.append(
                    f"service {name}: {len(covering)} alert policies of rule {rule} cover it, not 1"
                )
    grants = [inst.body for inst in instances(tf, "google_cloud_run_v2_service_iam_member", ev.variables)]
    roles = value("${local.function_target_service_roles}")
    for name, s in services.items():
        for fn, fn_roles in (roles or {}).items():
            for role in fn_roles:
                on = [
                    g
                    for g in grants
                    if value(g.get("name")) == name
                    and value(g.get("location")) == (s.get("location") or CHECK_REGION)
                    and fn in str(g.get("member"))
                    and role.split("/")[-1] in str(g.get("role"))
                ]
                if not on:
                    problems.append(f"service {name}: function {fn} lacks {role} on it")
    uptime = {
        value(i.body.get("display_name")): i.body
        for i in instances(tf, "google_monitoring_uptime_check_config", ev.variables)
    }
    down = [
        i.body
        for i in instances(tf, "google_monitoring_alert_policy", ev.variables)
        if (i.body.get("user_labels") or {}).get("canary_rule") == "canary_down"
    ]
    for name, s in services.items():
        wanted = bool(s.get("canary_tag_url"))
        checks = [body for title, body in uptime.items() if str(title).startswith(f"canary-guard {name}:")]
        policies_down = [p for p in down if value((p.get("user_labels") or {}).get("canary_service")) == name]
        if wanted and (len(checks) != 1 or len(policies_down) != 1):
            problems.append(
                f"service {name}: {len(checks)} uptime checks, {len(policies_down)} canary_down policies"
            )
        if not wanted and (checks or policies_down):
            problems.append(f"service {name} has no canary tag URL but an uptime check")
        if wanted and checks:
            host = value((block(checks[0], "monitored_resource") or {}).get("labels", {}).get("host"))
            if host != s["canary_tag_url"].removeprefix("https://").rstrip("/"):
                problems.append(f"service {name}: uptime check on {host!r}, not its canary tag URL")
    bodies = []
    for inst in instances(tf, "google_cloud_scheduler_job", ev.variables):
        target = block(inst.body, "http_target") or {}
        try:
            bodies.append(json.loads(base64.b64decode(ev.value(target.get("body")))))
        except (Unevaluable, ValueError, TypeError):
            continue
    for name, fullname in fullnames.items():
        if sum(body == {"service": fullname} for body in bodies) != 1:
            problems.append(f"service {name}: not exactly one load test job for {fullname}")
    for fid, fn in functions(tf, ev.variables).items():
        listed = str(value(env_of(fn).get("CANARY_SERVICES", ""))).split(",")
        if sorted(listed) != sorted(fullnames.values()):
            problems.append(f"function {fid}: CANARY_SERVICES is {listed}, not the watched services")
    for rtype in sorted(tf.resources):
        seen: dict[str, str] = {}
        for inst in instances(tf, rtype, ev.variables):
            for attr in ("name", "account_id", "role_id", "display_name"):
                if attr in inst.body and not (rtype.endswith("_iam_member") and attr == "name"):
                    label = f"{attr}={value(inst.body[attr])}"
                    if attr == "display_name" and len(label) - len("display_name=") > 512:
                        problems.append(f"{inst.address}: display_name over the API's 512 characters")
                    if label in seen:
                        problems.append(f"{inst.address} and {seen[label]}: the same {label}")
                    seen[label] = inst.address
    return problems
