"""Checks of identities and roles: no public access, only the allowed roles, custom roles of the
permissions the code uses, the build identity, one identity per function, emergency access."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tests.tf_checks_delivery import TOKEN_CREATOR, push_deliveries
from tests.tf_hcl import block, expr, is_expr, references, sa_ref, strings
from tests.tf_model import (
    Terraform,
    by_id,
    entry_point,
    function_by_entry,
    function_instances,
    functions,
    instances,
    invoker_grants,
)

PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")

BASIC_ROLES = ("roles/owner", "roles/editor", "roles/viewer")

IAM_TYPES_AUTHORITATIVE = (
    "google_project_iam_binding",
    "google_project_iam_policy",
    "google_project_iam_audit_config",
)


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
