# Firestore (native mode) holds rollouts, streaks, dedupe markers and the decision history.

resource "google_firestore_database" "default" {
  count = var.create_firestore_database ? 1 : 0

  project                           = var.project_id
  name                              = "(default)"
  location_id                       = coalesce(var.firestore_location, var.region)
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.firestore_delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"

  # The decision history outlives the pipeline: destroy leaves the database in place.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.apis]
}

# Firestore deletes a document some time (typically within 24 h) after the timestamp in its
# TTL field. The functions write `expires_at` (shared/clients/store_docs.py EXPIRES_AT):
#   applied_events, canary_rollback_messages  dedupe markers: MARKER_TTL (30 days) after they
#       are written, far past Pub/Sub's last redelivery (7 days of retention at most);
#   decisions  the decision history: var.decision_retention_days after the decision (0: the
#       field is not written and the history is kept for ever);
#   canary_notifications  the notification outbox: MARKER_TTL after the decision;
#   canary_checkpoint_leases  a lease is deleted when its run ends; one left by a run that died
#       expires MARKER_TTL after its own expiry (the next run takes it over long before).
# Rollouts and the per-service pointers are small and stay. Each field is exempt from
# single-field indexing (index_config {}): a timestamp written in order would hot-spot an index
# that no query uses.
locals {
  ttl_collection_groups = toset(["applied_events", "canary_rollback_messages", "decisions", "canary_notifications", "canary_checkpoint_leases"])
}

resource "google_firestore_field" "expires_at" {
  for_each = local.ttl_collection_groups

  project    = var.project_id
  database   = "(default)"
  collection = each.value
  field      = "expires_at"

  index_config {}
  ttl_config {}

  depends_on = [google_firestore_database.default, google_project_service.apis]
}
