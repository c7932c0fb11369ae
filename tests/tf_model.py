"""terraform/ as the checks see it: the parsed files, services.tf evaluated by terraform itself,
and resource instances with for_each and dynamic blocks expanded."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import yaml

from tests.tf_hcl import (
    _OPTIONS,
    Evaluator,
    Unevaluable,
    _balanced,
    _closing,
    _plain,
    _to_str,
    block,
    blocks,
    expr,
    is_expr,
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


def load_policy(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


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
