"""terraform/ offline, delivery (tests/tf_checks_delivery.py): the Pub/Sub push subscriptions
(one per CloudEvent function, retried, invoking only their function, dead-lettered, the retry
budget), the rollback and notification topics, the opt-in Token Creator of the Pub/Sub agent, and
the Cloud Scheduler jobs with their OIDC identity and bodies; each link also cut in a copy of
terraform/ to show the check reports it.
"""

from __future__ import annotations

import pytest

from shared.config import ENV_BY_FUNCTION
from tests import terraform_checks as tc
from tests.tf_fixtures import (
    ROOT,
    SCHEDULER_BODY_KEYS,
    SCHEDULER_JOBS,
    SCHEDULER_JOBS_RESOURCE,
    assert_cut_is_reported,
    caller_entry,
    cloud_event_entry_points,
    cut_link,
    job_entry,
    push_entry,
    res,
)

# The shared fixtures, imported as themselves so pytest finds them here.
from tests.tf_fixtures import policy as policy
from tests.tf_fixtures import tf as tf

# --- The real tree is clean ---------------------------------------------------------------


def test_cloud_event_functions_are_the_pubsub_ones():
    assert cloud_event_entry_points() == {"breach_counter", "rollback", "notify", "checkpoint_worker"}


def test_push_subscriptions_retry_and_invoke_only_their_function(tf):
    assert tc.check_push_deliveries(tf, cloud_event_entry_points()) == []


def test_notifications_reach_notify_from_every_function_that_decides(tf):
    assert tc.check_notification_chain(tf, ENV_BY_FUNCTION) == []


def test_rollback_topic_reaches_rollback(tf):
    assert tc.check_rollback_chain(tf) == []


def test_old_projects_can_let_the_pubsub_agent_sign_trigger_pushes(tf):
    assert tc.check_pubsub_agent_token_creator(tf) == []


def test_push_subscriptions_dead_letter(tf):
    assert tc.check_dead_letters(tf) == []


def test_scheduler_jobs_call_their_function_with_an_oidc_invoker(tf):
    assert tc.check_scheduler_jobs(tf, SCHEDULER_JOBS) == []


def test_scheduler_bodies_are_accepted_by_their_function(tf):
    assert tc.check_scheduler_bodies(tf, SCHEDULER_BODY_KEYS) == []


def retry_budget_s(attempts: int, min_backoff_s: float, max_backoff_s: float) -> float:
    """How long a message is redelivered before it is dead-lettered: Pub/Sub's exponential
    backoff doubles the wait between deliveries from the minimum up to the maximum."""
    return sum(min(min_backoff_s * 2**n, max_backoff_s) for n in range(attempts - 1))


def test_the_retry_budget_rides_out_a_half_hour_outage(tf):
    """The README's figure: with the default dead-letter limit and the push subscriptions' retry
    policy, a Cloud Run or Firestore outage of half an hour is ridden out before an alert or a
    rollback request is dead-lettered."""
    attempts = tf.variables["dead_letter_max_delivery_attempts"]["default"]
    budget = retry_budget_s(
        attempts,
        tc.duration_s(tf.locals["push_min_backoff"]),
        tc.duration_s(tf.locals["push_max_backoff"]),
    )
    assert attempts == 10
    assert budget == 2430  # 40.5 min
    assert budget >= 30 * 60
    assert "40 minutes" in (ROOT / "README.md").read_text()


# --- Cut one link: the check reports it ------------------------------------------------------


# (file, block, old, new, check that must report it, words of the report)
CUTS = [
    pytest.param(
        "delivery.tf",
        push_entry("rollback"),
        "topic             = google_pubsub_topic.rollback.id",
        "topic             = google_pubsub_topic.alerts.id",
        "rollback_chain",
        "rollback's push subscriptions are on ['alerts']",
        id="rollback-pushed-the-wrong-topic",
    ),
    pytest.param(
        "pubsub.tf",
        res("google_pubsub_topic_iam_member", "rollback_publisher_breach_counter"),
        'function["breach_counter"]',
        'function["rollback"]',
        "rollback_chain",
        "breach_counter's service account cannot publish",
        id="breach-counter-cannot-publish-rollback",
    ),
    pytest.param(
        "iam.tf",
        caller_entry("alerts_trigger"),
        'function    = "breach_counter"',
        'function    = "rollback"',
        "push_deliveries",
        "not exactly ['breach_counter']",
        id="alerts-trigger-invokes-wrong-function",
    ),
    pytest.param(
        "iam.tf",
        res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        'toset(["alerts_trigger", "rollback_trigger", "notify_push", "checkpoint_push"])',
        'toset(["alerts_trigger", "notify_push", "checkpoint_push"])',
        "token_creator",
        "the push identity caller[rollback_trigger] of rollback: the Pub/Sub service agent gets no "
        "Token Creator",
        id="token-creator-missing-on-a-trigger-identity",
    ),
    pytest.param(
        "iam.tf",
        res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        'toset(["alerts_trigger", "rollback_trigger", "notify_push", "checkpoint_push"])',
        'toset(["alerts_trigger", "notify_push", "checkpoint_push", "checkpoint_scheduler"])',
        "token_creator",
        "Token Creator on 'caller[checkpoint_scheduler]', not a push identity",
        id="token-creator-on-a-scheduler-identity",
    ),
    pytest.param(
        "iam.tf",
        res("google_service_account_iam_member", "pubsub_agent_token_creator"),
        ": toset([])",
        ': toset(["alerts_trigger"])',
        "token_creator",
        "pubsub_agent_token_creator[alerts_trigger]: Token Creator granted with "
        "var.grant_pubsub_agent_token_creator = false",
        id="token-creator-granted-when-switched-off",
    ),
    pytest.param(
        "variables.tf",
        'variable "grant_pubsub_agent_token_creator"',
        "default     = false",
        "default     = true",
        "token_creator",
        "var.grant_pubsub_agent_token_creator must be a bool defaulting to false",
        id="token-creator-on-by-default",
    ),
    pytest.param(
        "delivery.tf",
        push_entry("rollback"),
        "dead_letter_topic = google_pubsub_topic.rollback_dead_letter.id",
        "dead_letter_topic = google_pubsub_topic.rollback.id",
        "dead_letters",
        "push[rollback]: dead-letter topic is its own topic",
        id="dead-letter-topic-is-the-source-topic",
    ),
    pytest.param(
        "delivery.tf",
        None,
        '  role         = "roles/pubsub.subscriber"\n',
        '  role         = "roles/pubsub.viewer"\n',
        "dead_letters",
        "Pub/Sub's service agent has no roles/pubsub.subscriber on "
        "google_pubsub_subscription.push[breach_counter]",
        id="pubsub-agent-cannot-forward-dead-letters",
    ),
    pytest.param(
        "pubsub.tf",
        res("google_pubsub_subscription", "rollback_dead_letter"),
        "google_pubsub_topic.rollback_dead_letter.id",
        "google_pubsub_topic.rollback.id",
        "dead_letters",
        "dead-letter topic rollback_dead_letter has no subscription",
        id="dead-letter-topic-without-subscription",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "    oidc_token {\n"
        "      service_account_email = google_service_account.caller[each.value.caller].email\n"
        "      audience              = google_cloudfunctions2_function.function[each.value.function]"
        ".service_config[0].uri\n"
        "    }\n",
        "",
        "scheduler",
        "job checkpoint sends no OIDC token",
        id="scheduler-without-oidc",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "uri         = google_cloudfunctions2_function.function[each.value.function].",
        'uri         = google_cloudfunctions2_function.function["load_test"].',
        "scheduler",
        "job checkpoint does not call function checkpoint",
        id="scheduler-calls-wrong-function",
    ),
    pytest.param(
        "iam.tf",
        caller_entry("checkpoint_scheduler"),
        'function    = "checkpoint"',
        'function    = "load_test"',
        "scheduler",
        "job checkpoint (caller[checkpoint_scheduler]) may invoke ['load_test']",
        id="scheduler-identity-invokes-wrong-function",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "jsonencode({})",
        'jsonencode({ trigger = "cloud-scheduler" })',
        "scheduler_bodies",
        "job checkpoint: body key(s) ['trigger'] are refused by checkpoint",
        id="scheduler-body-with-unknown-key",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        "jsonencode({})",
        'jsonencode(["checkpoint"])',
        "scheduler_bodies",
        "job checkpoint: body ['checkpoint'] is not a JSON object",
        id="scheduler-body-not-an-object",
    ),
    pytest.param(
        "scheduler.tf",
        SCHEDULER_JOBS_RESOURCE,
        'headers     = { "Content-Type" = "application/json" }',
        'headers     = { "Content-Type" = "text/plain" }',
        "scheduler_bodies",
        "job checkpoint: Content-Type is 'text/plain', not application/json",
        id="scheduler-body-not-json",
    ),
    # Notifications: every deciding function publishes to the topic pushed to notify.
    pytest.param(
        "pubsub.tf",
        None,
        '"emergency_rollback", "checkpoint", "checkpoint_worker", "load_test"]',
        '"emergency_rollback", "checkpoint_worker", "load_test"]',
        "notification_chain",
        "checkpoint cannot publish to the notifications topic notifications",
        id="checkpoint-cannot-publish-notifications",
    ),
    pytest.param(
        "delivery.tf",
        push_entry("notify"),
        "topic             = google_pubsub_topic.notifications.id",
        "topic             = google_pubsub_topic.rollback.id",
        "notification_chain",
        "notify is pushed ['rollback'], notifications go to ['notifications']",
        id="notify-pushed-the-wrong-topic",
    ),
    # Delivery (delivery.tf): push subscriptions declared in Terraform, no provisioner.
    pytest.param(
        "delivery.tf",
        None,
        "    rollback = {\n"
        "      topic             = google_pubsub_topic.rollback.id\n"
        "      dead_letter_topic = google_pubsub_topic.rollback_dead_letter.id\n"
        '      pusher            = "rollback_trigger"\n'
        "    }\n",
        "",
        "rollback_chain",
        "rollback's push subscriptions are on []",
        id="rollback-never-delivered",
    ),
    pytest.param(
        "delivery.tf",
        push_entry("breach_counter"),
        'pusher            = "alerts_trigger"',
        'pusher            = "rollback_trigger"',
        "push_deliveries",
        "pusher of breach_counter (caller[rollback_trigger]) may invoke ['rollback'], "
        "not exactly ['breach_counter']",
        id="push-signed-by-another-caller",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "      audience = google_cloudfunctions2_function.function[each.key].service_config[0].uri\n",
        "",
        "push_deliveries",
        "the OIDC audience is not the function's URL",
        id="push-token-without-audience",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "  ack_deadline_seconds       = local.functions[each.key].timeout_s\n",
        "  ack_deadline_seconds       = 10\n",
        "push_deliveries",
        "ack_deadline_seconds is 10, not breach_counter's timeout",
        id="push-deadline-shorter-than-the-function",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "  retry_policy {\n"
        "    minimum_backoff = local.push_min_backoff\n"
        "    maximum_backoff = local.push_max_backoff\n"
        "  }\n",
        "",
        "push_deliveries",
        "no retry_policy with minimum and maximum backoff",
        id="push-without-backoff",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "# Forwarding a message",
        'resource "terraform_data" "attach" {\n'
        '  provisioner "local-exec" {\n'
        '    command = "gcloud pubsub subscriptions update x"\n'
        "  }\n"
        "}\n\n# Forwarding a message",
        "push_deliveries",
        "terraform_data.attach runs a provisioner",
        id="provisioner-during-apply",
    ),
    pytest.param(
        "scheduler.tf",
        job_entry("checkpoint"),
        'caller      = "checkpoint_scheduler"',
        'caller      = "alerts_trigger"',
        "scheduler",
        "job checkpoint (caller[alerts_trigger]) may invoke ['breach_counter']",
        id="scheduler-job-with-another-callers-identity",
    ),
    pytest.param(
        "delivery.tf",
        None,
        "  dead_letter_policy {\n"
        "    dead_letter_topic     = each.value.dead_letter_topic\n"
        "    max_delivery_attempts = var.dead_letter_max_delivery_attempts\n"
        "  }\n",
        "",
        "dead_letters",
        "push[breach_counter]: no dead_letter_policy",
        id="push-without-dead-letters",
    ),
]


@pytest.mark.parametrize(("filename", "block", "old", "new", "check", "expected"), CUTS)
def test_cutting_a_link_is_reported(tmp_path, policy, filename, block, old, new, check, expected):
    assert_cut_is_reported(tmp_path, policy, filename, block, old, new, check, expected)


def test_scheduler_body_keys_are_those_of_the_called_function(tmp_path, policy):
    # One body for both jobs: "mode" is load_test's alone, so only checkpoint refuses it.
    cut = cut_link(
        tmp_path, "scheduler.tf", SCHEDULER_JOBS_RESOURCE, "jsonencode({})", 'jsonencode({ mode = "load" })'
    )
    assert tc.check_scheduler_bodies(cut, SCHEDULER_BODY_KEYS) == [
        "job checkpoint: body key(s) ['mode'] are refused by checkpoint (accepts {} or keys ['service'])"
    ]
