# Delivery of Pub/Sub messages to the four Pub/Sub-driven functions, declared entirely here.
#
# Each function is an HTTP function to Cloud Functions (no event_trigger): a push subscription
# of our own delivers to its Cloud Run URL with an OIDC token of a dedicated identity (which
# holds roles/run.invoker on that one function, iam.tf), retries with exponential backoff and
# dead-letters after var.dead_letter_max_delivery_attempts. functions-framework turns the push
# body ({"message": {...}, "subscription": ...}) into a CloudEvent of the type an Eventarc
# trigger delivers (google.cloud.pubsub.topic.v1.messagePublished), its id the message id.
#
# Why not an Eventarc trigger: Eventarc creates and owns its push subscription, the provider
# marks it output-only, and a dead-letter policy could only be added to it with gcloud after
# apply (and is lost when Eventarc re-creates it). Declaring the subscription keeps every
# delivery setting in Terraform, applied with Terraform's identity and without provisioners.

locals {
  # Function key (local.functions) -> what it consumes, who pushes it and where it dead-letters.
  push_deliveries = {
    breach_counter = {
      topic             = google_pubsub_topic.alerts.id
      dead_letter_topic = google_pubsub_topic.alerts_dead_letter.id
      pusher            = "alerts_trigger"
    }
    rollback = {
      topic             = google_pubsub_topic.rollback.id
      dead_letter_topic = google_pubsub_topic.rollback_dead_letter.id
      pusher            = "rollback_trigger"
    }
    notify = {
      topic             = google_pubsub_topic.notifications.id
      dead_letter_topic = google_pubsub_topic.notifications_dead_letter.id
      pusher            = "notify_push"
    }
    checkpoint_worker = {
      topic             = google_pubsub_topic.checkpoints.id
      dead_letter_topic = google_pubsub_topic.checkpoints_dead_letter.id
      pusher            = "checkpoint_push"
    }
  }

  # Pub/Sub's retry policy between failed deliveries (exponential, 10 s doubling to 600 s):
  # with 10 attempts a Cloud Run or Firestore outage of ~40 minutes is ridden out (README).
  push_min_backoff = "10s"
  push_max_backoff = "600s"
}

resource "google_pubsub_subscription" "push" {
  for_each = local.push_deliveries

  project = var.project_id
  name    = "${var.prefix}-${replace(each.key, "_", "-")}-push"
  topic   = each.value.topic
  labels  = { app = "canary-guard" }

  # For a push subscription the ack deadline is the request timeout: the function's own
  # timeout, so Pub/Sub never redelivers a message that is still being handled.
  ack_deadline_seconds       = local.functions[each.key].timeout_s
  message_retention_duration = "604800s" # a week of undelivered messages survives an outage

  push_config {
    push_endpoint = google_cloudfunctions2_function.function[each.key].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.caller[each.value.pusher].email
      # Cloud Run accepts a token whose audience is the service's URL.
      audience = google_cloudfunctions2_function.function[each.key].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = local.push_min_backoff
    maximum_backoff = local.push_max_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = each.value.dead_letter_topic
    max_delivery_attempts = var.dead_letter_max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires, even when no canary is released for a month
  }

  # The pusher may invoke the function, and (old projects) Pub/Sub may sign its tokens, before
  # the first message is pushed; Pub/Sub may publish dead letters before one is forwarded.
  depends_on = [
    google_cloud_run_v2_service_iam_member.caller_invokes_function,
    google_service_account_iam_member.pubsub_agent_token_creator,
    google_pubsub_topic_iam_member.alerts_dead_letter_publisher,
    google_pubsub_topic_iam_member.rollback_dead_letter_publisher,
    google_pubsub_topic_iam_member.notifications_dead_letter_publisher,
  ]
}

# Forwarding a message to the dead-letter topic acknowledges it on the source subscription:
# Pub/Sub's service agent needs roles/pubsub.subscriber on exactly that subscription.
resource "google_pubsub_subscription_iam_member" "pubsub_agent_forwards_dead_letters" {
  for_each = local.push_deliveries

  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
