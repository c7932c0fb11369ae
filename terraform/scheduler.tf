# Cloud Scheduler: the periodic checkpoint and the nightly load test. Schedules and time
# zones come from shared/policy.yaml. Each job calls exactly one function with an OIDC token
# of its own service account (local.callers), which holds roles/run.invoker on that function
# only (iam.tf).

locals {
  scheduler_jobs = {
    checkpoint = {
      function    = "checkpoint"
      caller      = "checkpoint_scheduler"
      description = "canary-guard: judge every watched service's canary (GO / NO-GO / INCONCLUSIVE) and advance the ramps."
      schedule    = local.checkpoint_cfg.schedule
      time_zone   = local.checkpoint_cfg.time_zone
      paused      = var.checkpoint_paused
    }
  }
}

resource "google_cloud_scheduler_job" "job" {
  for_each = local.scheduler_jobs

  project     = var.project_id
  region      = var.region
  name        = "${var.prefix}-${replace(each.key, "_", "-")}"
  description = each.value.description
  schedule    = each.value.schedule
  time_zone   = each.value.time_zone
  paused      = each.value.paused

  # The function's timeout; Cloud Scheduler allows HTTP attempt deadlines of at most 30
  # minutes (only load_test's can be longer).
  attempt_deadline = "${min(google_cloudfunctions2_function.function[each.value.function].service_config[0].timeout_seconds, 1800)}s"

  # Never retried. checkpoint: the next scheduled run is the retry, never stack checkpoints.
  # load_test: a failed load test is a result, not something to re-run under load.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.function[each.value.function].service_config[0].uri
    headers     = { "Content-Type" = "application/json" }
    # An empty object: every watched service (each sent to a checkpoint_worker). The handler
    # refuses keys it does not know (400), so nothing else goes here.
    body = base64encode(jsonencode({}))

    oidc_token {
      service_account_email = google_service_account.caller[each.value.caller].email
      audience              = google_cloudfunctions2_function.function[each.value.function].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.caller_invokes_function]
}

# The nightly load test: one job per watched service (local.load_test_jobs, services.tf), each
# calling load_test for its service only, so the number of services never makes one call too
# long (a call tests one service inside load_test's own timeout).
resource "google_cloud_scheduler_job" "load_test" {
  for_each = local.load_test_jobs

  project     = var.project_id
  region      = var.region
  name        = "${var.prefix}-${replace(each.key, "_", "-")}"
  description = "canary-guard: nightly load test and rate-limit probe of ${each.value.service}'s canary and stable."
  schedule    = local.load_test_cfg.schedule
  time_zone   = local.load_test_cfg.time_zone
  paused      = var.load_test_paused

  attempt_deadline = "${min(google_cloudfunctions2_function.function["load_test"].service_config[0].timeout_seconds, 1800)}s"

  # A failed load test is a result, not something to re-run under load.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.function["load_test"].service_config[0].uri
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode(jsonencode({ service = each.value.fullname }))

    oidc_token {
      service_account_email = google_service_account.caller["load_test_scheduler"].email
      audience              = google_cloudfunctions2_function.function["load_test"].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.caller_invokes_function]
}
