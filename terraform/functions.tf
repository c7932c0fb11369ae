# The seven 2nd-gen functions: one entry each in local.functions, one resource for all of them.
# Entry points are the top-level functions of functions/main.py; environment variable names
# are the contract in shared/config.py (ENV_DEFAULTS, ENV_BY_FUNCTION). CLOUD_RUN_API_ENDPOINT
# and MONITORING_API_ENDPOINT are for the local stand-ins only and are deliberately never set
# here: the functions then use Google's APIs. CHAT_WEBHOOK_URL comes from Secret Manager when
# var.chat_webhook_secret_id is set, for notify only (chat_webhook = true): every other function
# publishes its decisions' notifications to NOTIFY_TOPIC and never talks to the webhook.

locals {
  function_labels = { app = "canary-guard" }

  # Key: the function's name in Terraform (google_cloudfunctions2_function.function["KEY"]),
  # its deployed name (${var.prefix}-KEY with "-" for "_") and its runtime service account
  # (google_service_account.function["KEY"], iam.tf).
  # breach_counter and rollback are delivered by push subscriptions (delivery.tf).
  #   chat_webhook    gets CHAT_WEBHOOK_URL from Secret Manager (when the secret is set).
  functions = {
    # Alert incident (Pub/Sub) -> streak per rule -> rollback request when the limit is reached.
    breach_counter = {
      entry_point = "breach_counter"
      description = "canary-guard: counts consecutive breach observations per rule from Cloud Monitoring incidents."
      memory      = "512Mi"
      # Longer than the store's 60 s contention deadline and Firestore's ~60 s BeginTransaction
      # retries, so a slow store ends in a logged error and a redelivery, not a silent kill.
      timeout_s     = 120
      max_instances = 5
      ingress       = "ALLOW_INTERNAL_ONLY"
      environment = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        CANARY_SERVICES         = local.canary_services
        DECISION_RETENTION_DAYS = var.decision_retention_days
        NOTIFY_TOPIC            = google_pubsub_topic.notifications.name
        ROLLBACK_TOPIC          = google_pubsub_topic.rollback.name
      }
      chat_webhook = false
    }

    # Rollback request (Pub/Sub) -> stable revision back to 100 % of the traffic.
    rollback = {
      entry_point   = "rollback"
      description   = "canary-guard: rolls the service back to its stable revision on a rollback request."
      memory        = "512Mi"
      timeout_s     = 300
      max_instances = 2
      ingress       = "ALLOW_INTERNAL_ONLY"
      environment = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        CANARY_SERVICES         = local.canary_services
        DECISION_RETENTION_DAYS = var.decision_retention_days
        NOTIFY_TOPIC            = google_pubsub_topic.notifications.name
      }
      chat_webhook = false
    }

    # On-call, by hand (HTTP, IAM-authenticated) -> the same rollback routine, dry_run possible.
    # The only function reachable from outside Google's network: the on-call engineer calls it
    # from a laptop. IAM still admits only var.emergency_rollback_members (iam.tf).
    emergency_rollback = {
      entry_point   = "emergency_rollback"
      description   = "canary-guard: manual emergency rollback (IAM-authenticated HTTP)."
      memory        = "512Mi"
      timeout_s     = 300
      max_instances = 2
      ingress       = "ALLOW_ALL"
      environment = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        CANARY_SERVICES         = local.canary_services
        DECISION_RETENTION_DAYS = var.decision_retention_days
        NOTIFY_TOPIC            = google_pubsub_topic.notifications.name
      }
      chat_webhook = false
    }

    # Cloud Scheduler (policy checkpoint.schedule) -> GO / NO-GO / INCONCLUSIVE -> next step.
    checkpoint = {
      entry_point = "checkpoint"
      description = "canary-guard: periodic checkpoint - judges the canary and advances the traffic ramp."
      memory      = "512Mi"
      # Worst case when Google APIs are slow: 8 Monitoring reads x 20 s, a Cloud Run read and a
      # traffic write x 5 attempts x 15 s: ~310 s. A run killed between the traffic write and
      # its Firestore record loses that step's history entry, so leave room; max_instances = 1
      # means a slow run makes the next minutes' calls fail fast instead of stacking up.
      timeout_s     = 360
      max_instances = 1
      ingress       = "ALLOW_INTERNAL_ONLY"
      environment = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        CANARY_SERVICES         = local.canary_services
        DECISION_RETENTION_DAYS = var.decision_retention_days
        NOTIFY_TOPIC            = google_pubsub_topic.notifications.name
        ROLLBACK_TOPIC          = google_pubsub_topic.rollback.name
        # Monitoring is read once per minute here; each service is then judged by a worker.
        CHECKPOINT_TOPIC   = google_pubsub_topic.checkpoints.name
        FUNCTION_TIMEOUT_S = 360
      }
      chat_webhook = false
    }

    # One service's checkpoint minute (Pub/Sub, pushed from the checkpoints topic, sent by the
    # checkpoint with that service's metrics) -> the same judgement and ramp step. Many at once:
    # one instance per message (concurrency 1), up to var.checkpoint_worker_max_instances.
    checkpoint_worker = {
      entry_point = "checkpoint_worker"
      description = "canary-guard: judges one watched service's checkpoint minute and walks its ramp."
      memory      = "512Mi"
      # A Cloud Run traffic write x 5 attempts x 15 s plus the store's 60 s contention deadline;
      # also the rollout's checkpoint lease (FUNCTION_TIMEOUT_S), so a crashed run frees it.
      timeout_s     = 180
      max_instances = var.checkpoint_worker_max_instances
      ingress       = "ALLOW_INTERNAL_ONLY"
      environment = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        CANARY_SERVICES         = local.canary_services
        DECISION_RETENTION_DAYS = var.decision_retention_days
        NOTIFY_TOPIC            = google_pubsub_topic.notifications.name
        ROLLBACK_TOPIC          = google_pubsub_topic.rollback.name
        FUNCTION_TIMEOUT_S      = 180
      }
      chat_webhook = false
    }

    # Notification (Pub/Sub, pushed from the notifications topic) -> the chat webhook. The only
    # function with the webhook secret; a webhook that misbehaves fails its deliveries only.
    notify = {
      entry_point   = "notify"
      description   = "canary-guard: posts decisions (start, steps, freezes, rollbacks) to the team's chat webhook."
      memory        = "256Mi"
      timeout_s     = 60 # the webhook gets 10 s; a stalled one is retried by Pub/Sub
      max_instances = 2
      ingress       = "ALLOW_INTERNAL_ONLY"
      environment = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        CANARY_SERVICES         = local.canary_services
        DECISION_RETENTION_DAYS = var.decision_retention_days
        CHAT_FORMAT             = var.chat_format
        DASHBOARD_URL           = local.dashboard_url
      }
      chat_webhook = true
    }

    # Cloud Scheduler (policy load_test.schedule) -> bounded load + rate-limit probe -> results.
    # FUNCTION_TIMEOUT_S / FUNCTION_MEMORY_MB are its own timeout and memory: it bounds its run by them.
    load_test = {
      entry_point = "load_test"
      description = "canary-guard: nightly load test and rate-limit probe of canary and stable."
      memory      = "${local.load_test_memory_mb}Mi"
      timeout_s   = local.load_test_timeout_s
      # One scheduled call per service, all at the policy's time: one instance each.
      max_instances = min(length(local.watched), 100)
      ingress       = "ALLOW_INTERNAL_ONLY"
      environment = {
        GOOGLE_CLOUD_PROJECT    = var.project_id
        CANARY_SERVICES         = local.canary_services
        DECISION_RETENTION_DAYS = var.decision_retention_days
        NOTIFY_TOPIC            = google_pubsub_topic.notifications.name
        FUNCTION_TIMEOUT_S      = local.load_test_timeout_s
        FUNCTION_MEMORY_MB      = local.load_test_memory_mb
        LOAD_TEST_AUTH          = "id_token"
      }
      chat_webhook = false
    }
  }
}

resource "google_cloudfunctions2_function" "function" {
  #checkov:skip=CKV_GCP_124:Only emergency_rollback allows all ingress: the on-call engineer must reach it from anywhere in an emergency; access is IAM-only (run.invoker for var.emergency_rollback_members, never a public principal). tests/test_terraform_iam.py fails if any other function is not ALLOW_INTERNAL_ONLY.
  for_each = local.functions

  project     = var.project_id
  location    = var.region
  name        = "${var.prefix}-${replace(each.key, "_", "-")}"
  description = each.value.description
  labels      = local.function_labels

  build_config {
    runtime         = var.python_runtime
    entry_point     = each.value.entry_point
    service_account = google_service_account.build.id # projects/PROJECT/serviceAccounts/EMAIL
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = each.value.memory
    timeout_seconds                = each.value.timeout_s
    min_instance_count             = 0
    max_instance_count             = each.value.max_instances
    ingress_settings               = each.value.ingress
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function[each.key].email
    environment_variables          = each.value.environment

    dynamic "secret_environment_variables" {
      for_each = local.chat_webhook_enabled && each.value.chat_webhook ? [var.chat_webhook_secret_id] : []
      content {
        key        = "CHAT_WEBHOOK_URL"
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }


  # The build identity's grants must be in force before the build (time_sleep, main.tf); its
  # own identity's grants and the database must exist before the first event arrives.
  depends_on = [
    time_sleep.propagation,
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
    google_project_iam_member.build_reads_staged_source,
    google_project_iam_member.function,
    google_cloud_run_v2_service_iam_member.function_on_target,
    google_service_account_iam_member.traffic_updater_act_as_target_runtime,
    google_secret_manager_secret_iam_member.chat_webhook,
    google_firestore_database.default,
  ]
}
