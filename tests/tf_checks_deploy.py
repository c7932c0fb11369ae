"""Checks of what is deployed: entry points, environment variables, expiry, provider pins, the
source archive and bucket, on-call commands, load-test limits, first-apply waits, variables."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tests.tf_hcl import block, blocks, dynamic_blocks, is_expr
from tests.tf_model import (
    Terraform,
    entry_point,
    env_of,
    function_by_entry,
    function_instances,
    functions,
    instances,
    secret_env_keys,
)


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
