# Cloud Scheduler: the periodic checkpoint and the nightly load test. Schedules and time
# zones come from shared/policy.yaml. Each job calls exactly one function with an OIDC token
# of its own service account, which holds roles/run.invoker on that function only (iam.tf).

resource "google_cloud_scheduler_job" "checkpoint" {
  project     = var.project_id
  region      = var.region
  name        = "${var.prefix}-checkpoint"
  description = "canary-guard: judge the running canary (GO / NO-GO / INCONCLUSIVE) and advance the ramp."
  schedule    = local.checkpoint_cfg.schedule
  time_zone   = local.checkpoint_cfg.time_zone
  paused      = var.checkpoint_paused

  attempt_deadline = "${google_cloudfunctions2_function.checkpoint.service_config[0].timeout_seconds}s"

  # The next scheduled run is the retry: never stack checkpoints.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.checkpoint.service_config[0].uri
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode(jsonencode({ trigger = "cloud-scheduler" }))

    oidc_token {
      service_account_email = google_service_account.checkpoint_scheduler.email
      audience              = google_cloudfunctions2_function.checkpoint.service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.checkpoint_scheduler_invokes_checkpoint]
}

resource "google_cloud_scheduler_job" "load_test" {
  project     = var.project_id
  region      = var.region
  name        = "${var.prefix}-load-test"
  description = "canary-guard: nightly load test and rate-limit probe of canary and stable."
  schedule    = local.load_test_cfg.schedule
  time_zone   = local.load_test_cfg.time_zone
  paused      = var.load_test_paused

  # Cloud Scheduler allows HTTP attempt deadlines of at most 30 minutes.
  attempt_deadline = "${min(google_cloudfunctions2_function.load_test.service_config[0].timeout_seconds, 1800)}s"

  # A failed load test is a result, not something to re-run under load.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.load_test.service_config[0].uri
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode(jsonencode({ trigger = "cloud-scheduler" }))

    oidc_token {
      service_account_email = google_service_account.load_test_scheduler.email
      audience              = google_cloudfunctions2_function.load_test.service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.load_test_scheduler_invokes_load_test]
}
