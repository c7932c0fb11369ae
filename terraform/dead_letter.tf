# Dead letters for the two Pub/Sub-triggered functions.
#
# A 2nd-gen function's Pub/Sub trigger is an Eventarc trigger; Eventarc creates and owns the
# push subscription on our topic (projects/P/subscriptions/eventarc-REGION-...). The
# google_cloudfunctions2_function resource exposes neither the subscription nor a
# dead-letter setting, and Terraform cannot declare a subscription it did not create.
# Eventarc's documented way is to update that subscription afterwards, which is what this
# does with gcloud once per trigger (again whenever the trigger or the settings change):
#   - dead-letter topic + max delivery attempts on the Eventarc subscription,
#   - roles/pubsub.subscriber on that one subscription for Pub/Sub's service agent
#     (it must ack the message it forwards; publisher on the dead-letter topic is in pubsub.tf).
# Where gcloud is not available, set attach_trigger_dead_letter = false and run
# scripts/attach_dead_letter.sh by hand (terraform/README.md).

locals {
  # Each Pub/Sub-triggered function -> the dead-letter topic of its trigger's subscription.
  trigger_dead_letter_topics = {
    breach_counter = google_pubsub_topic.alerts_dead_letter.id
    rollback       = google_pubsub_topic.rollback_dead_letter.id
  }
}

resource "terraform_data" "trigger_dead_letter" {
  for_each = var.attach_trigger_dead_letter ? local.trigger_dead_letter_topics : {}

  triggers_replace = [
    google_cloudfunctions2_function.function[each.key].event_trigger[0].trigger,
    each.value,
    var.dead_letter_max_delivery_attempts,
  ]

  provisioner "local-exec" {
    command = "bash '${path.module}/scripts/attach_dead_letter.sh'"
    environment = {
      PROJECT               = var.project_id
      TRIGGER               = google_cloudfunctions2_function.function[each.key].event_trigger[0].trigger
      DEAD_LETTER_TOPIC     = each.value
      MAX_DELIVERY_ATTEMPTS = var.dead_letter_max_delivery_attempts
      PUBSUB_SERVICE_AGENT  = local.pubsub_service_agent
    }
  }

  depends_on = [
    google_pubsub_topic_iam_member.alerts_dead_letter_publisher,
    google_pubsub_topic_iam_member.rollback_dead_letter_publisher,
    google_pubsub_subscription.alerts_dead_letter,
    google_pubsub_subscription.rollback_dead_letter,
  ]
}
