# The five 2nd-gen functions. Entry points are the top-level functions of functions/main.py;
# environment variable names are the contract in shared/config.py (ENV_DEFAULTS,
# ENV_BY_FUNCTION). CLOUD_RUN_API_ENDPOINT and MONITORING_API_ENDPOINT are for the local
# stand-ins only and are deliberately never set here: the functions then use Google's APIs.
# CHAT_WEBHOOK_URL comes from Secret Manager when var.chat_webhook_secret_id is set.

locals {
  function_labels = { app = "canary-guard" }
}

# Alert incident (Pub/Sub) -> streak per rule -> rollback request when the limit is reached.
resource "google_cloudfunctions2_function" "breach_counter" {
  project     = var.project_id
  location    = var.region
  name        = "${var.prefix}-breach-counter"
  description = "canary-guard: counts consecutive breach observations per rule from Cloud Monitoring incidents."
  labels      = local.function_labels

  build_config {
    runtime     = var.python_runtime
    entry_point = "breach_counter"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "512Mi"
    timeout_seconds                = 60
    min_instance_count             = 0
    max_instance_count             = 5
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function["breach_counter"].email
    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project_id
      CANARY_SERVICES      = local.service_fullname
      ROLLBACK_TOPIC       = google_pubsub_topic.rollback.name
    }
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = google_pubsub_topic.alerts.id
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.alerts_trigger.email
  }

  # Its identity's grants and the database must exist before the first event arrives.
  depends_on = [
    google_project_iam_member.function,
    google_cloud_run_v2_service_iam_member.function_on_target,
    google_service_account_iam_member.traffic_updater_act_as_target_runtime,
    google_secret_manager_secret_iam_member.chat_webhook,
    google_firestore_database.default,
  ]
}

# Rollback request (Pub/Sub) -> stable revision back to 100 % of the traffic.
resource "google_cloudfunctions2_function" "rollback" {
  project     = var.project_id
  location    = var.region
  name        = "${var.prefix}-rollback"
  description = "canary-guard: rolls the service back to its stable revision on a rollback request."
  labels      = local.function_labels

  build_config {
    runtime     = var.python_runtime
    entry_point = "rollback"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "512Mi"
    timeout_seconds                = 300
    min_instance_count             = 0
    max_instance_count             = 2
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function["rollback"].email
    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project_id
      CANARY_SERVICES      = local.service_fullname
    }

    dynamic "secret_environment_variables" {
      for_each = local.chat_webhook_enabled ? [var.chat_webhook_secret_id] : []
      content {
        key        = "CHAT_WEBHOOK_URL"
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = google_pubsub_topic.rollback.id
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.rollback_trigger.email
  }

  # Its identity's grants and the database must exist before the first event arrives.
  depends_on = [
    google_project_iam_member.function,
    google_cloud_run_v2_service_iam_member.function_on_target,
    google_service_account_iam_member.traffic_updater_act_as_target_runtime,
    google_secret_manager_secret_iam_member.chat_webhook,
    google_firestore_database.default,
  ]
}

# On-call, by hand (HTTP, IAM-authenticated) -> the same rollback routine, dry_run possible.
# The only function reachable from outside Google's network: the on-call engineer calls it
# from a laptop. IAM still admits only var.emergency_rollback_members (iam.tf).
resource "google_cloudfunctions2_function" "emergency_rollback" {
  #checkov:skip=CKV_GCP_124:The on-call engineer must reach it from anywhere in an emergency; access is IAM-only (run.invoker for var.emergency_rollback_members, never a public principal).
  project     = var.project_id
  location    = var.region
  name        = "${var.prefix}-emergency-rollback"
  description = "canary-guard: manual emergency rollback (IAM-authenticated HTTP)."
  labels      = local.function_labels

  build_config {
    runtime     = var.python_runtime
    entry_point = "emergency_rollback"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "512Mi"
    timeout_seconds                = 300
    min_instance_count             = 0
    max_instance_count             = 2
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function["emergency_rollback"].email
    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project_id
      CANARY_SERVICES      = local.service_fullname
    }

    dynamic "secret_environment_variables" {
      for_each = local.chat_webhook_enabled ? [var.chat_webhook_secret_id] : []
      content {
        key        = "CHAT_WEBHOOK_URL"
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  # Its identity's grants and the database must exist before the first event arrives.
  depends_on = [
    google_project_iam_member.function,
    google_cloud_run_v2_service_iam_member.function_on_target,
    google_service_account_iam_member.traffic_updater_act_as_target_runtime,
    google_secret_manager_secret_iam_member.chat_webhook,
    google_firestore_database.default,
  ]
}

# Cloud Scheduler (policy checkpoint.schedule) -> GO / NO-GO / INCONCLUSIVE -> next step.
resource "google_cloudfunctions2_function" "checkpoint" {
  project     = var.project_id
  location    = var.region
  name        = "${var.prefix}-checkpoint"
  description = "canary-guard: periodic checkpoint - judges the canary and advances the traffic ramp."
  labels      = local.function_labels

  build_config {
    runtime     = var.python_runtime
    entry_point = "checkpoint"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "512Mi"
    timeout_seconds                = 120
    min_instance_count             = 0
    max_instance_count             = 1
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function["checkpoint"].email
    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project_id
      CANARY_SERVICES      = local.service_fullname
      ROLLBACK_TOPIC       = google_pubsub_topic.rollback.name
    }

    dynamic "secret_environment_variables" {
      for_each = local.chat_webhook_enabled ? [var.chat_webhook_secret_id] : []
      content {
        key        = "CHAT_WEBHOOK_URL"
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  # Its identity's grants and the database must exist before the first event arrives.
  depends_on = [
    google_project_iam_member.function,
    google_cloud_run_v2_service_iam_member.function_on_target,
    google_service_account_iam_member.traffic_updater_act_as_target_runtime,
    google_secret_manager_secret_iam_member.chat_webhook,
    google_firestore_database.default,
  ]
}

# Cloud Scheduler (policy load_test.schedule) -> bounded load + rate-limit probe -> results.
resource "google_cloudfunctions2_function" "load_test" {
  project     = var.project_id
  location    = var.region
  name        = "${var.prefix}-load-test"
  description = "canary-guard: nightly load test and rate-limit probe of canary and stable."
  labels      = local.function_labels

  build_config {
    runtime     = var.python_runtime
    entry_point = "load_test"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "${local.load_test_memory_mb}Mi"
    timeout_seconds                = local.load_test_timeout_s
    min_instance_count             = 0
    max_instance_count             = 1
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function["load_test"].email
    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project_id
      CANARY_SERVICES      = local.service_fullname
      FUNCTION_TIMEOUT_S   = local.load_test_timeout_s
      FUNCTION_MEMORY_MB   = local.load_test_memory_mb
      LOAD_TEST_AUTH       = "id_token"
    }
  }

  # Its identity's grants and the database must exist before the first event arrives.
  depends_on = [
    google_project_iam_member.function,
    google_cloud_run_v2_service_iam_member.function_on_target,
    google_service_account_iam_member.traffic_updater_act_as_target_runtime,
    google_secret_manager_secret_iam_member.chat_webhook,
    google_firestore_database.default,
  ]
}
