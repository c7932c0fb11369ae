"""Checks of delivery: push subscriptions, the rollback and notification chains, dead letters, the
Pub/Sub agent, and the Cloud Scheduler jobs and their bodies."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.tf_hcl import Evaluator, Unevaluable, block, dynamic_blocks, expr, references, sa_ref
from tests.tf_model import (
    CHECK_VARIABLES,
    Instance,
    Terraform,
    by_id,
    entry_point,
    env_of,
    function_by_entry,
    function_instances,
    function_ref,
    functions,
    instances,
    invoker_grants,
)

PUBSUB_AGENT_RE = re.compile(
    r"^serviceAccount:service-\$\{local\.project_number\}@gcp-sa-pubsub\.iam\.gserviceaccount\.com$"
)


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
