# The policy file, the names everything else refers to, the project facts and the APIs.

locals {
  # THE policy file: the functions read the same file at runtime (shared/policy.py), so
  # every threshold, duration and schedule below comes from here and is typed nowhere else.
  policy         = yamldecode(file("${path.module}/../shared/policy.yaml"))
  rules          = local.policy.rollback_rules
  alerting       = local.policy.alerting
  uptime         = local.policy.alerting.uptime_check
  checkpoint_cfg = local.policy.checkpoint
  load_test_cfg  = local.policy.load_test

  # Where the policy file sits in the deployed function: the Python runtime serves the
  # uploaded source from /workspace, and the archive puts shared/ at its root (source.tf).

  # load_test bounds its own run by these, so they must equal its service_config.
  load_test_timeout_s = var.load_test_timeout_s
  load_test_memory_mb = var.load_test_memory_mb

  project_number = data.google_project.this.number

  # Google-managed service agents (they exist once their API is enabled / first used).
  monitoring_notification_agent = "serviceAccount:service-${local.project_number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
  pubsub_service_agent          = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # The runtime identity of each watched service: traffic updates must be able to "act as"
  # exactly these accounts (roles/iam.serviceAccountUser on each, nothing wider). Services
  # that share an account share its grant.
  target_runtime_service_accounts = {
    for name, s in local.watched : name => coalesce(
      s.runtime_service_account,
      try(data.google_cloud_run_v2_service.target[name].template[0].service_account, ""),
      "${local.project_number}-compute@developer.gserviceaccount.com",
    )
  }

  chat_webhook_enabled = var.chat_webhook_secret_id != ""

  required_apis = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
}

data "google_project" "this" {
  project_id = var.project_id
}

# The Cloud Run services under release must already exist (canary-guard never creates them).
data "google_cloud_run_v2_service" "target" {
  for_each = local.watched

  project  = var.project_id
  location = each.value.location
  name     = each.key
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? local.required_apis : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# Enabling an API is not the end of it: Cloud Functions' and Cloud Build's service agents get
# their permissions minutes later, and new IAM grants, such as the build service account's,
# take a while to reach Cloud Build: a build started at once fails with "permission denied".
# The functions wait for this (on the first apply only: a time_sleep sleeps when it is created).
resource "time_sleep" "propagation" {
  create_duration = "120s"

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
    google_project_iam_member.build_reads_staged_source,
  ]
}

# The load test has to finish inside its function's timeout.
check "load_test_fits_its_timeout" {
  assert {
    condition     = local.load_test_cfg.mode != "open" || local.load_test_cfg.duration_s + local.load_test_cfg.request_timeout_s < local.load_test_timeout_s
    error_message = "policy load_test.duration_s + request_timeout_s must be shorter than var.load_test_timeout_s."
  }
}
