# Pub/Sub: the three topics that carry the pipeline, their dead-letter topics and the
# subscriptions that keep dead-lettered messages for inspection.
#
#   Cloud Monitoring ──▶ alerts topic ──(push subscription)──▶ breach_counter
#   breach_counter / checkpoint / on-call ──▶ rollback topic ──(push subscription)──▶ rollback
#   every deciding function ──▶ notifications topic ──(push subscription)──▶ notify ──▶ chat
#   checkpoint (each minute) ──▶ checkpoints topic ──(push subscription)──▶ checkpoint_worker ×N
#
# The push subscriptions, with their retry and dead-letter policies, are in delivery.tf.

resource "google_pubsub_topic" "alerts" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for incident notifications; no CMEK key is provisioned for this pipeline.
  project = var.project_id
  name    = var.alerts_topic_name
  labels  = { app = "canary-guard" }

  # Keep a day of incidents so a subscription can be seeked back after an outage.
  message_retention_duration = "86400s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "rollback" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for rollback requests; no CMEK key is provisioned for this pipeline.
  project                    = var.project_id
  name                       = var.rollback_topic_name
  labels                     = { app = "canary-guard" }
  message_retention_duration = "86400s"

  depends_on = [google_project_service.apis]
}

# Notifications of decisions (start, steps, freezes, rollbacks...), published by every function
# once the decision is committed, pushed to notify (delivery.tf).
resource "google_pubsub_topic" "notifications" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for chat notifications; no CMEK key is provisioned for this pipeline.
  project                    = var.project_id
  name                       = var.notify_topic_name
  labels                     = { app = "canary-guard" }
  message_retention_duration = "86400s"

  depends_on = [google_project_service.apis]
}

# One message per watched service per checkpoint minute, with that service's metrics, pushed
# to checkpoint_worker (delivery.tf): Cloud Functions runs as many workers as there are
# services, up to var.checkpoint_worker_max_instances.
resource "google_pubsub_topic" "checkpoints" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for a minute's metrics; no CMEK key is provisioned for this pipeline.
  project                    = var.project_id
  name                       = var.checkpoint_topic_name
  labels                     = { app = "canary-guard" }
  message_retention_duration = "3600s" # a minute's message is stale long before

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "checkpoints_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for dead-lettered checkpoint minutes; no CMEK key is provisioned for this pipeline.
  project = var.project_id
  name    = "${var.checkpoint_topic_name}-dead-letter"
  labels  = { app = "canary-guard" }

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "notifications_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for dead-lettered notifications; no CMEK key is provisioned for this pipeline.
  project = var.project_id
  name    = "${var.notify_topic_name}-dead-letter"
  labels  = { app = "canary-guard" }

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "alerts_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for dead-lettered incidents; no CMEK key is provisioned for this pipeline.
  project = var.project_id
  name    = "${var.alerts_topic_name}-dead-letter"
  labels  = { app = "canary-guard" }

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "rollback_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for dead-lettered rollback requests; no CMEK key is provisioned for this pipeline.
  project = var.project_id
  name    = "${var.rollback_topic_name}-dead-letter"
  labels  = { app = "canary-guard" }

  depends_on = [google_project_service.apis]
}

# A topic without a subscription drops what is published to it: these keep dead letters
# for a week (`gcloud pubsub subscriptions pull ... --auto-ack` to read them).
resource "google_pubsub_subscription" "alerts_dead_letter" {
  project                    = var.project_id
  name                       = "${var.alerts_topic_name}-dead-letter"
  topic                      = google_pubsub_topic.alerts_dead_letter.id
  labels                     = { app = "canary-guard" }
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = "" # never expires, even when nobody pulls for a month
  }
}

resource "google_pubsub_subscription" "notifications_dead_letter" {
  project                    = var.project_id
  name                       = "${var.notify_topic_name}-dead-letter"
  topic                      = google_pubsub_topic.notifications_dead_letter.id
  labels                     = { app = "canary-guard" }
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "rollback_dead_letter" {
  project                    = var.project_id
  name                       = "${var.rollback_topic_name}-dead-letter"
  topic                      = google_pubsub_topic.rollback_dead_letter.id
  labels                     = { app = "canary-guard" }
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "checkpoints_dead_letter" {
  project                    = var.project_id
  name                       = "${var.checkpoint_topic_name}-dead-letter"
  topic                      = google_pubsub_topic.checkpoints_dead_letter.id
  labels                     = { app = "canary-guard" }
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# --- Who may publish -------------------------------------------------------------------

# Cloud Monitoring publishes incidents through its notification service agent, which exists
# only a while after the project's first Pub/Sub notification channel: see
# time_sleep.monitoring_agent (monitoring.tf).
resource "google_pubsub_topic_iam_member" "alerts_publisher_monitoring" {
  project = var.project_id
  topic   = google_pubsub_topic.alerts.name
  role    = "roles/pubsub.publisher"
  member  = local.monitoring_notification_agent

  depends_on = [time_sleep.monitoring_agent]
}

# A streak that reaches its limit, or a checkpoint NO-GO that does, becomes a rollback request.
resource "google_pubsub_topic_iam_member" "rollback_publisher_breach_counter" {
  project = var.project_id
  topic   = google_pubsub_topic.rollback.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["breach_counter"].member
}

resource "google_pubsub_topic_iam_member" "rollback_publisher_checkpoint" {
  project = var.project_id
  topic   = google_pubsub_topic.rollback.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["checkpoint"].member
}

resource "google_pubsub_topic_iam_member" "rollback_publisher_checkpoint_worker" {
  project = var.project_id
  topic   = google_pubsub_topic.rollback.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["checkpoint_worker"].member
}

# The on-call engineers may request a rollback with `gcloud pubsub topics publish`.
resource "google_pubsub_topic_iam_member" "rollback_publisher_oncall" {
  for_each = toset(var.emergency_rollback_members)

  project = var.project_id
  topic   = google_pubsub_topic.rollback.name
  role    = "roles/pubsub.publisher"
  member  = each.value
}

# Pub/Sub's own service agent forwards undeliverable messages to the dead-letter topics.
resource "google_pubsub_topic_iam_member" "alerts_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.alerts_dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "rollback_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.rollback_dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

# The checkpoint, each minute, hands one message per service to the workers.
resource "google_pubsub_topic_iam_member" "checkpoints_publisher_checkpoint" {
  project = var.project_id
  topic   = google_pubsub_topic.checkpoints.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["checkpoint"].member
}

resource "google_pubsub_topic_iam_member" "checkpoints_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.checkpoints_dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "notifications_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.notifications_dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

# The functions that commit decisions publish their notifications (NOTIFY_TOPIC); notify only
# reads them.
locals {
  notification_publishers = toset(["breach_counter", "rollback", "emergency_rollback", "checkpoint", "checkpoint_worker", "load_test"])
}

resource "google_pubsub_topic_iam_member" "notifications_publisher" {
  for_each = local.notification_publishers

  project = var.project_id
  topic   = google_pubsub_topic.notifications.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function[each.key].member
}
