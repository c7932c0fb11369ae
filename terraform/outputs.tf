output "emergency_rollback_url" {
  description = "HTTPS endpoint of the emergency_rollback function (IAM-authenticated; callable only by var.emergency_rollback_members)."
  value       = google_cloudfunctions2_function.function["emergency_rollback"].service_config[0].uri
}

output "emergency_rollback_commands" {
  description = "Copy-paste commands for the on-call engineer: dry run first, then the real rollback (SERVICE: one of the watched services)."
  value       = <<-EOT
    # SERVICE: one of ${join(", ", sort(keys(local.watched)))}
    # Dry run: what would change (nothing is changed).
    curl -sS -X POST '${google_cloudfunctions2_function.function["emergency_rollback"].service_config[0].uri}' \
      -H "Authorization: Bearer $(gcloud auth print-identity-token)" \
      -H 'Content-Type: application/json' \
      -d '{"service": "SERVICE", "reason": "manual: <why>", "dry_run": true}'

    # Roll back now (stable revision back to 100 %).
    curl -sS -X POST '${google_cloudfunctions2_function.function["emergency_rollback"].service_config[0].uri}' \
      -H "Authorization: Bearer $(gcloud auth print-identity-token)" \
      -H 'Content-Type: application/json' \
      -d '{"service": "SERVICE", "reason": "manual: <why>", "dry_run": false}'

    # Or queue a rollback request for the rollback function (Pub/Sub, retried until done):
    gcloud pubsub topics publish ${google_pubsub_topic.rollback.name} --project=${var.project_id} \
      --message='{"service": "SERVICE", "reason": "manual: <why>"}'
  EOT
}

output "function_urls" {
  description = "HTTPS endpoints of the seven functions (only emergency_rollback accepts traffic from outside Google's network)."
  value       = { for fn, f in google_cloudfunctions2_function.function : fn => f.service_config[0].uri }
}

output "alerts_topic" {
  description = "Pub/Sub topic Cloud Monitoring publishes incidents to (breach_counter's trigger)."
  value       = google_pubsub_topic.alerts.id
}

output "rollback_topic" {
  description = "Pub/Sub topic of rollback requests (pushed to rollback)."
  value       = google_pubsub_topic.rollback.id
}

output "dead_letter_subscriptions" {
  description = "Pull subscriptions holding dead-lettered messages: gcloud pubsub subscriptions pull SUB --limit=10."
  value = {
    alerts        = google_pubsub_subscription.alerts_dead_letter.id
    rollback      = google_pubsub_subscription.rollback_dead_letter.id
    notifications = google_pubsub_subscription.notifications_dead_letter.id
  }
}

output "push_subscriptions" {
  description = "The push subscriptions that deliver alerts to breach_counter and rollback requests to rollback (retry and dead-letter policies are theirs)."
  value       = { for fn, sub in google_pubsub_subscription.push : fn => sub.id }
}

output "function_service_accounts" {
  description = "Runtime service account of each function."
  value       = { for fn, sa in google_service_account.function : fn => sa.email }
}

output "alert_policies" {
  description = "Alert policy resource names by canary_rule."
  value = merge(
    { for rule, policy in google_monitoring_alert_policy.metric_rule : rule => policy.name },
    local.canary_uptime_enabled ? { canary_down = google_monitoring_alert_policy.canary_down[0].name } : {},
  )
}

output "dashboard_url" {
  description = "Cloud Monitoring dashboard: canary vs stable."
  value       = local.dashboard_url
}
