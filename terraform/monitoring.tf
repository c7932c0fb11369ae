# Cloud Monitoring: the alert policies that observe the rollback rules, the Pub/Sub
# notification channel that carries their incidents to breach_counter, the canary uptime
# check and the dashboard.
#
# Every threshold, duration, renotify interval and auto-close comes from shared/policy.yaml
# (local.rules / local.alerting, main.tf). Each policy carries the user label `canary_rule`:
# that label, not the display name, maps an incident to a rule in breach_counter.
#
# The canary revision changes with every release, so the metric policies filter on the
# service and GROUP BY revision_name: each revision is its own time series and its incident
# carries resource.labels.revision_name; breach_counter ignores incidents of revisions that
# are not the current canary. A cross-series reducer aggregates away every resource label
# not in group_by_fields, and the incident keeps only what is left: service_name and
# location are grouped by too, so the incident names the full service (shared/events.py).
# Each open incident is renotified every renotify_interval_s (one more breach observation)
# and its close is notified too (a recovery).

locals {
  alignment_period = "${local.alerting.alignment_period_s}s"
  alert_duration   = "${local.alerting.duration_s}s"

  run_revision_filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${var.service_name}\""

  # The resource labels decode_alert reads (shared/events.py REVISION_LABELS); the filter
  # already pins one service, so grouping by its name and location splits nothing further.
  revision_group_by = [
    "resource.label.service_name",
    "resource.label.location",
    "resource.label.revision_name",
  ]

  alert_documentation = <<-EOT
    canary-guard observes this rule for the canary revision of Cloud Run service `${var.service_name}` (${local.service_location}).
    Each notification of an open incident is one breach observation; the breach_counter function counts them per rule and
    requests a rollback when the streak limit in shared/policy.yaml is reached. A closed incident is a recovery.

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

resource "google_monitoring_alert_policy" "error_rate" {
  project      = var.project_id
  display_name = "canary-guard ${var.service_name}: error rate (5xx / all)"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "5xx ratio per revision above the policy threshold"

    condition_threshold {
      filter     = "metric.type = \"run.googleapis.com/request_count\" AND ${local.run_revision_filter} AND metric.labels.response_code_class = \"5xx\""
      comparison = "COMPARISON_GT"
      # rollback_rules.error_rate.threshold is a fraction (0.01 = 1 %), like the ratio.
      threshold_value = local.rules.error_rate.threshold
      duration        = local.alert_duration

      aggregations {
        alignment_period     = local.alignment_period
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = local.revision_group_by
      }

      denominator_filter = "metric.type = \"run.googleapis.com/request_count\" AND ${local.run_revision_filter}"

      denominator_aggregations {
        alignment_period     = local.alignment_period
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = local.revision_group_by
      }

      # No requests, no ratio: the condition goes inactive (no breach is counted without
      # evidence, and an open incident closes: a recovery).
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

  user_labels = {
    app            = "canary-guard"
    canary_rule    = "error_rate"
    canary_service = var.service_name
  }

  documentation {
    subject   = "canary-guard: ${var.service_name} canary error rate above the rollback threshold"
    content   = local.alert_documentation
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "latency_p95" {
  project      = var.project_id
  display_name = "canary-guard ${var.service_name}: P95 latency"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "P95 request latency per revision above the policy threshold (ms)"

    condition_threshold {
      filter     = "metric.type = \"run.googleapis.com/request_latencies\" AND ${local.run_revision_filter}"
      comparison = "COMPARISON_GT"
      # request_latencies is in milliseconds, like rollback_rules.latency_p95.threshold.
      threshold_value = local.rules.latency_p95.threshold
      duration        = local.alert_duration

      # Merge the revision's latency distributions (all response codes), then take their
      # 95th percentile: the revision's real P95, not the worst per-code P95.
      aggregations {
        alignment_period     = local.alignment_period
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_PERCENTILE_95"
        group_by_fields      = local.revision_group_by
      }

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

  user_labels = {
    app            = "canary-guard"
    canary_rule    = "latency_p95"
    canary_service = var.service_name
  }

  documentation {
    subject   = "canary-guard: ${var.service_name} canary P95 latency above the rollback threshold"
    content   = local.alert_documentation
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "memory" {
  project      = var.project_id
  display_name = "canary-guard ${var.service_name}: memory utilisation"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "Container memory utilisation per revision above the policy threshold"

    condition_threshold {
      filter          = "metric.type = \"run.googleapis.com/container/memory/utilizations\" AND ${local.run_revision_filter}"
      comparison      = "COMPARISON_GT"
      threshold_value = local.rules.memory.threshold
      duration        = local.alert_duration

      # Near-peak utilisation of each instance, then the worst instance of the revision.
      aggregations {
        alignment_period     = local.alignment_period
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = local.revision_group_by
      }

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

  user_labels = {
    app            = "canary-guard"
    canary_rule    = "memory"
    canary_service = var.service_name
  }

  documentation {
    subject   = "canary-guard: ${var.service_name} canary memory utilisation above the rollback threshold"
    content   = local.alert_documentation
    mime_type = "text/markdown"
  }
}

# --- canary_down: an uptime check on the canary's tag URL --------------------------------
#
# Only with var.canary_tag_url set. Its incidents carry the uptime_url resource (labels
# host, project_id), not a revision: breach_counter maps them to the service through the
# policy user label canary_service and to the current canary of that service. Without a tag
# URL, canary_down is observed by the checkpoint function only.

locals {
  canary_uptime_enabled = var.canary_tag_url != ""
  canary_host           = trimsuffix(trimprefix(var.canary_tag_url, "https://"), "/")
}

resource "google_monitoring_uptime_check_config" "canary" {
  count = local.canary_uptime_enabled ? 1 : 0

  project      = var.project_id
  display_name = "canary-guard ${var.service_name}: canary tag"
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
      host       = local.canary_host
    }
  }

  user_labels = {
    app            = "canary-guard"
    canary_service = var.service_name
  }

  depends_on = [google_cloud_run_v2_service_iam_member.uptime_check_invokes_target]
}

resource "google_monitoring_alert_policy" "canary_down" {
  count = local.canary_uptime_enabled ? 1 : 0

  project      = var.project_id
  display_name = "canary-guard ${var.service_name}: canary down"
  combiner     = "OR"
  severity     = "CRITICAL"

  conditions {
    display_name = "Canary tag uptime check failing from more checker regions than the policy threshold"

    condition_threshold {
      filter          = "metric.type = \"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type = \"uptime_url\" AND metric.labels.check_id = \"${google_monitoring_uptime_check_config.canary[0].uptime_check_id}\""
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
    canary_service = var.service_name
  }

  documentation {
    subject   = "canary-guard: ${var.service_name} canary is not serving"
    content   = local.alert_documentation
    mime_type = "text/markdown"
  }
}

# --- Dashboard: canary vs stable ---------------------------------------------------------

resource "google_monitoring_dashboard" "canary" {
  project = var.project_id
  dashboard_json = templatefile("${path.module}/../infra/dashboard.json", {
    service_name             = var.service_name
    alerts_dead_letter_sub   = google_pubsub_subscription.alerts_dead_letter.name
    rollback_dead_letter_sub = google_pubsub_subscription.rollback_dead_letter.name
    error_rate_policy        = google_monitoring_alert_policy.error_rate.name
    latency_p95_policy       = google_monitoring_alert_policy.latency_p95.name
    memory_policy            = google_monitoring_alert_policy.memory.name
  })

  depends_on = [google_project_service.apis]
}
