# Cloud Monitoring: the alert policies that observe the rollback rules, the Pub/Sub
# notification channel that carries their incidents to breach_counter, the canary uptime
# check and the dashboard.
#
# Every metric, aligner, threshold, duration, renotify interval and auto-close comes from
# shared/policy.yaml (local.rules / local.alerting, main.tf). Each policy carries the user label
# `canary_rule`: that label, not the display name, maps an incident to a rule in breach_counter.
#
# The canary revision changes with every release, so the metric policies filter on the
# service and GROUP BY revision_name: each revision is its own time series and its incident
# carries resource.labels.revision_name; breach_counter ignores incidents of revisions that
# are not the current canary. A cross-series reducer aggregates away every resource label
# not in group_by_fields, and the incident keeps only what is left: service_name and
# location are grouped by too, so the incident names the full service (shared/events.py).
# An alert is a trigger, not evidence: each opened or renotified incident makes breach_counter
# read the canary's recent minutes from Cloud Monitoring and judge each of them (shared/handlers/breach.py),
# so a repeated or reordered notification cannot count twice; a closed one changes nothing.

locals {
  alignment_period = "${local.alerting.alignment_period_s}s"
  alert_duration   = "${local.alerting.duration_s}s"

  # The resource labels decode_alert reads (shared/events.py REVISION_LABELS): a policy covers
  # several services, so its incidents name the service, its location and the revision.
  revision_group_by = [
    "resource.label.service_name",
    "resource.label.location",
    "resource.label.revision_name",
  ]

  alert_documentation = <<-EOT
    canary-guard observes this rule for the canary revisions of its watched Cloud Run services (the incident names the service and revision).
    Each notification makes the breach_counter function judge the canary's recent minutes from Cloud Monitoring; it
    requests a rollback when a rule's run of breach minutes reaches its limit in shared/policy.yaml.

    On-call: the rollback is automatic. To roll back by hand now, or to see what would change (dry_run), call the
    emergency rollback function: `terraform output -raw emergency_rollback_commands` in the canary-guard terraform/ directory.
  EOT
}

resource "google_monitoring_notification_channel" "alerts" {
  project      = var.project_id
  display_name = "canary-guard alerts (Pub/Sub ${var.alerts_topic_name})"
  type         = "pubsub"
  description  = "Delivers canary-guard alert incidents to the breach_counter function."
  labels = {
    topic = google_pubsub_topic.alerts.id
  }
  user_labels = { app = "canary-guard" }

  depends_on = [google_project_service.apis]
}

# Cloud Monitoring creates its notification service agent
# (service-NUMBER@gcp-sa-monitoring-notification) when the project's first Pub/Sub channel is
# created, asynchronously: a grant to it made at once can be refused because the principal
# does not exist yet. The google provider (GA) cannot create that identity explicitly
# (google_project_service_identity is google-beta only), so every grant to the agent waits
# for this sleep, which starts once the channel exists. Only the first apply sleeps.
resource "time_sleep" "monitoring_agent" {
  create_duration = "60s"

  depends_on = [google_monitoring_notification_channel.alerts]
}

# One alert policy per entry of the policy file's alerting.metric_conditions (rule -> metric,
# aligner, reducer, optional ratio denominator): adding a metric rule is a policy change.
# One per rule and group of at most local.services_per_alert_policy services (services.tf).
resource "google_monitoring_alert_policy" "metric_rule" {
  for_each = local.metric_policies

  project      = var.project_id
  display_name = "canary-guard ${local.alerting.metric_conditions[each.value.rule].title} (${local.service_groups[each.value.group].title})"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "${local.alerting.metric_conditions[each.value.rule].title} per revision above the policy threshold"

    condition_threshold {
      filter     = "${local.alerting.metric_conditions[each.value.rule].filter} AND ${local.service_groups[each.value.group].filter}"
      comparison = "COMPARISON_GT"
      # In the metric's own unit, like the rule's threshold: a fraction for ratios and
      # utilisation (0.01 = 1 %), milliseconds for request_latencies.
      threshold_value = local.rules[each.value.rule].threshold
      duration        = local.alert_duration

      aggregations {
        alignment_period     = local.alignment_period
        per_series_aligner   = local.alerting.metric_conditions[each.value.rule].per_series_aligner
        cross_series_reducer = local.alerting.metric_conditions[each.value.rule].cross_series_reducer
        group_by_fields      = local.revision_group_by
      }

      # A ratio (error_rate: 5xx / all) divides by the same metric without the numerator's
      # label filter, aggregated the same way.
      denominator_filter = local.alerting.metric_conditions[each.value.rule].denominator_filter == "" ? null : "${local.alerting.metric_conditions[each.value.rule].denominator_filter} AND ${local.service_groups[each.value.group].filter}"

      dynamic "denominator_aggregations" {
        for_each = local.alerting.metric_conditions[each.value.rule].denominator_filter == "" ? [] : [local.alerting.metric_conditions[each.value.rule]]
        content {
          alignment_period     = local.alignment_period
          per_series_aligner   = denominator_aggregations.value.per_series_aligner
          cross_series_reducer = denominator_aggregations.value.cross_series_reducer
          group_by_fields      = local.revision_group_by
        }
      }

      # No data, no evaluation: the condition goes inactive (an alert is only a trigger to judge
      # minutes, and an open incident closes).
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
    }
  }

  notification_channels = [google_monitoring_notification_channel.alerts.name]

  alert_strategy {
    auto_close           = "${local.alerting.auto_close_s}s"
    notification_prompts = ["OPENED", "CLOSED"]

    notification_channel_strategy {
      notification_channel_names = [google_monitoring_notification_channel.alerts.name]
      renotify_interval          = "${local.alerting.renotify_interval_s}s"
    }
  }

  # No canary_service label: the policy covers several services, its incidents name theirs.
  user_labels = {
    app         = "canary-guard"
    canary_rule = each.value.rule
  }

  documentation {
    subject   = "canary-guard: a canary's ${local.alerting.metric_conditions[each.value.rule].title} above the rollback threshold"
    content   = local.alert_documentation
    mime_type = "text/markdown"
  }
}

# --- canary_down: an uptime check on the canary's tag URL --------------------------------
#
# One per service with a canary_tag_url (local.uptime_checked). Its incidents carry the
# uptime_url resource (labels host, project_id), not a revision: breach_counter maps them to
# the service through the policy user label canary_service and to the current canary of that
# service. Without a tag URL, canary_down is observed by the checkpoint function only.

resource "google_monitoring_uptime_check_config" "canary" {
  for_each = local.uptime_checked

  project      = var.project_id
  display_name = "canary-guard ${each.key}: canary tag"
  period       = "${local.uptime.period_s}s"
  timeout      = "${local.uptime.timeout_s}s"
  checker_type = "STATIC_IP_CHECKERS"

  http_check {
    path           = local.uptime.path
    port           = 443
    use_ssl        = true
    validate_ssl   = true
    request_method = "GET"

    accepted_response_status_codes {
      status_class = "STATUS_CLASS_2XX"
    }

    dynamic "service_agent_authentication" {
      for_each = var.uptime_check_authenticated ? ["OIDC_TOKEN"] : []
      content {
        type = service_agent_authentication.value
      }
    }
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = each.value.canary_host
    }
  }

  user_labels = {
    app            = "canary-guard"
    canary_service = each.key
  }

  depends_on = [google_cloud_run_v2_service_iam_member.uptime_check_invokes_target]
}

resource "google_monitoring_alert_policy" "canary_down" {
  for_each = local.uptime_checked

  project      = var.project_id
  display_name = "canary-guard ${each.key}: canary down"
  combiner     = "OR"
  severity     = "CRITICAL"

  conditions {
    display_name = "Canary tag uptime check failing from more checker regions than the policy threshold"

    condition_threshold {
      filter          = "metric.type = \"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type = \"uptime_url\" AND metric.labels.check_id = \"${google_monitoring_uptime_check_config.canary[each.key].uptime_check_id}\""
      comparison      = "COMPARISON_GT"
      threshold_value = local.rules.canary_down.threshold
      duration        = local.alert_duration

      # Count the checker regions whose latest result failed, per checked host. Two check
      # periods per alignment window so every region has reported at least once.
      aggregations {
        alignment_period     = "${local.uptime.period_s * 2}s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["resource.label.project_id", "resource.label.host"]
      }
    }
  }

  notification_channels = [google_monitoring_notification_channel.alerts.name]

  alert_strategy {
    auto_close           = "${local.alerting.auto_close_s}s"
    notification_prompts = ["OPENED", "CLOSED"]

    notification_channel_strategy {
      notification_channel_names = [google_monitoring_notification_channel.alerts.name]
      renotify_interval          = "${local.alerting.renotify_interval_s}s"
    }
  }

  user_labels = {
    app            = "canary-guard"
    canary_rule    = "canary_down"
    canary_service = each.key
  }

  documentation {
    subject   = "canary-guard: ${each.key} canary is not serving"
    content   = local.alert_documentation
    mime_type = "text/markdown"
  }
}

# --- Dashboard: canary vs stable ---------------------------------------------------------

locals {
  # Linked from every chat notification (notify's DASHBOARD_URL) and printed by `terraform output`.
  dashboard_url = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.canary.id), length(split("/", google_monitoring_dashboard.canary.id)) - 1)}?project=${var.project_id}"
}

resource "google_monitoring_dashboard" "canary" {
  project = var.project_id
  dashboard_json = templatefile("${path.module}/../infra/dashboard.json", {
    # Every chart covers all watched services, split by revision (named after its service).
    services                      = join(", ", sort(keys(local.watched)))
    service_names                 = join(",", [for name in sort(keys(local.watched)) : "\\\"${name}\\\""])
    alerts_dead_letter_sub        = google_pubsub_subscription.alerts_dead_letter.name
    rollback_dead_letter_sub      = google_pubsub_subscription.rollback_dead_letter.name
    notifications_dead_letter_sub = google_pubsub_subscription.notifications_dead_letter.name
    # The alert-policy charts: one row per group of services (services.tf).
    alert_groups = [
      for group, g in local.service_groups : {
        services    = join(", ", g.services)
        error_rate  = google_monitoring_alert_policy.metric_rule["error_rate/${group}"].name
        latency_p95 = google_monitoring_alert_policy.metric_rule["latency_p95/${group}"].name
        memory      = google_monitoring_alert_policy.metric_rule["memory/${group}"].name
      }
    ]
  })

  depends_on = [google_project_service.apis]
}
