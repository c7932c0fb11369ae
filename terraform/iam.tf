# Identities and the ONLY roles they get.
#
# One service account per function, holding just what that function uses. Grants are made on
# the narrowest resource the API allows: the target Cloud Run service, its runtime service
# account, one topic, one secret. Firestore and Cloud Monitoring have no finer grant than
# the project, so roles/datastore.user, roles/monitoring.viewer and
# roles/monitoring.metricWriter are project-level, like reading Cloud Run operations (a custom
# role with run.operations.get only); owner/editor never appear.
#
# The callers of the functions (the three push subscriptions, the two Cloud Scheduler jobs and
# the on-call members) get roles/run.invoker on exactly their function's underlying Cloud Run
# service, nothing at project level.
#
# The functions are built by their own build service account (google_service_account.build),
# not by Cloud Build's default one: since July 2024 a new project's default build account may
# lack the permissions a function build needs.

locals {
  # The callers of the functions: one identity per push subscription / Cloud Scheduler job,
  # each with roles/run.invoker on exactly the one function it calls.
  callers = {
    alerts_trigger = {
      account_id  = "trigger-alerts"
      description = "Pub/Sub push identity: delivers alert incidents to breach_counter."
      function    = "breach_counter"
    }
    rollback_trigger = {
      account_id  = "trigger-rollback"
      description = "Pub/Sub push identity: delivers rollback requests to rollback."
      function    = "rollback"
    }
    notify_push = {
      account_id  = "push-notify"
      description = "Pub/Sub push identity: delivers notifications to notify."
      function    = "notify"
    }
    checkpoint_push = {
      account_id  = "push-checkpoint"
      description = "Pub/Sub push identity: delivers checkpoint minutes to checkpoint_worker."
      function    = "checkpoint_worker"
    }
    checkpoint_scheduler = {
      account_id  = "sched-checkpoint"
      description = "Cloud Scheduler OIDC identity: calls the checkpoint function."
      function    = "checkpoint"
    }
    load_test_scheduler = {
      account_id  = "sched-load-test"
      description = "Cloud Scheduler OIDC identity: calls the load_test function."
      function    = "load_test"
    }
  }

  # Roles per function. "roles/..." is a predefined role; "custom/NAME" is the custom role
  # local.custom_roles[NAME] below, made of exactly the permissions the code uses.
  function_project_roles = {
    # An alert is a trigger: breach_counter reads the canary's minutes from Cloud Monitoring.
    breach_counter     = ["roles/datastore.user", "roles/monitoring.viewer"]
    rollback           = ["roles/datastore.user", "custom/operation_reader"]
    emergency_rollback = ["roles/datastore.user", "custom/operation_reader"]
    checkpoint         = ["roles/datastore.user", "roles/monitoring.viewer", "roles/monitoring.metricWriter", "custom/operation_reader"]
    # Judges from the metrics in its message; reads Monitoring itself only for a window the
    # message does not hold (a step held longer than the batched read).
    checkpoint_worker = ["roles/datastore.user", "roles/monitoring.viewer", "roles/monitoring.metricWriter", "custom/operation_reader"]
    load_test         = ["roles/datastore.user", "roles/monitoring.metricWriter"]
    # Reads the rollout for the message, and its outbox entry (delivered once).
    notify = ["roles/datastore.user"]
  }

  # Roles on the Cloud Run service under release: read it, update its traffic, send it requests.
  # Never roles/run.developer: it could also delete the service or deploy a new revision.
  function_target_service_roles = {
    breach_counter     = ["custom/service_reader"]
    rollback           = ["custom/traffic_updater"]
    emergency_rollback = ["custom/traffic_updater"]
    checkpoint         = ["custom/traffic_updater"]
    checkpoint_worker  = ["custom/traffic_updater"]
    load_test          = ["custom/service_reader", "roles/run.invoker"]
    notify             = []
  }

  # The custom roles: each permission with the code that needs it (terraform/README.md).
  custom_roles = {
    service_reader = {
      title       = "canary-guard Cloud Run service reader"
      description = "Reads the service under release: its revisions, tags and traffic split."
      # shared/clients/cloudrun.py CloudRunTraffic.get (GET service): which revision is the canary.
      permissions = ["run.services.get"]
    }
    traffic_updater = {
      title       = "canary-guard Cloud Run traffic updater"
      description = "Reads the service under release and updates its traffic split (ramp steps, rollbacks)."
      # CloudRunTraffic.update_traffic: GET the service (and again while waiting for the
      # update to be served), then PATCH its traffic (update_mask traffic, with the etag read).
      permissions = ["run.services.get", "run.services.update"]
    }
    operation_reader = {
      title       = "canary-guard Cloud Run operation reader"
      description = "Reads the long-running operation of a traffic update canary-guard made."
      # CloudRunTraffic.update_traffic: operation.result() polls the update's operation.
      # Operations are not children of a service, so this is granted on the project; without
      # it the code falls back to reading the service until it serves the new split.
      permissions = ["run.operations.get"]
    }
  }

  # What a first build needs, checked against Google's "Custom service account for Cloud Build"
  # page for Cloud Run functions: Logs Writer (build logs), Artifact Registry Writer (the images
  # and the buildpacks cache go to the gcf-artifacts repository, which Cloud Functions creates
  # on the first deploy, so no finer grant exists before it) and read access to the source.
  # Google's Cloud Run variant of that page suggests Storage Object Admin "to retrieve the
  # source": a build only reads it, so objectViewer on exactly the two places the zip lives
  # (below) is granted instead; nothing is written to Cloud Storage by the build.
  build_project_roles = ["roles/logging.logWriter", "roles/artifactregistry.writer"]

  # Cloud Functions copies storage_source into its own bucket gcf-v2-sources-NUMBER-REGION
  # (created on the first deploy) and Cloud Build fetches the source from there: the build
  # account reads the objects of that one bucket, through a condition on a project grant.
  build_staged_source_prefix = "projects/_/buckets/gcf-v2-sources-${local.project_number}-${var.region}/"

  # Updating a service's traffic deploys it "as" its runtime service account.
  traffic_updaters = toset(["rollback", "emergency_rollback", "checkpoint", "checkpoint_worker"])

  # The functions that read CHAT_WEBHOOK_URL (shared/config.py ENV_BY_FUNCTION): chat_webhook
  # in local.functions (functions.tf).
  chat_notifiers = toset([for fn, f in local.functions : fn if f.chat_webhook])

  function_project_grants = {
    for pair in flatten([
      for fn, roles in local.function_project_roles : [for role in roles : { fn = fn, role = role }]
    ]) : "${pair.fn} ${pair.role}" => pair
  }
  # function_target_service_grants (one per function, role and watched service): services.tf.

  # The act-as grants: each traffic updater on each distinct runtime account of the watched
  # services (two services sharing an account share one grant: a duplicate would remove the
  # binding of both when one is destroyed).
  act_as_grants = {
    for pair in setproduct(sort(local.traffic_updaters), sort(distinct(values(local.target_runtime_service_accounts)))) :
    "${pair[0]} ${pair[1]}" => { fn = pair[0], account = pair[1] }
  }
}

resource "google_service_account" "function" {
  for_each = local.functions

  project      = var.project_id
  account_id   = "${var.prefix}-${replace(each.key, "_", "-")}"
  display_name = "canary-guard ${each.key} function"
  description  = "Runtime identity of the canary-guard ${each.key} function."

  depends_on = [google_project_service.apis]
}

# Builds the functions' images (build_config.service_account, functions.tf).
resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${var.prefix}-build"
  display_name = "canary-guard function builds"
  description  = "Cloud Build identity that builds the canary-guard functions from the source zip."

  depends_on = [google_project_service.apis]
}

# Callers: one identity per push subscription / job (local.callers), each allowed to invoke one function.
resource "google_service_account" "caller" {
  for_each = local.callers

  project      = var.project_id
  account_id   = "${var.prefix}-${each.value.account_id}"
  display_name = "canary-guard ${replace(each.key, "_", " ")}"
  description  = each.value.description

  depends_on = [google_project_service.apis]
}

# --- Function identities ---------------------------------------------------------------

resource "google_project_iam_custom_role" "canary_guard" {
  for_each = local.custom_roles

  project     = var.project_id
  role_id     = "${var.prefix}_${each.key}"
  title       = each.value.title
  description = each.value.description
  permissions = each.value.permissions
  stage       = "GA"
}

resource "google_project_iam_member" "function" {
  for_each = local.function_project_grants

  project = var.project_id
  role    = startswith(each.value.role, "custom/") ? google_project_iam_custom_role.canary_guard[trimprefix(each.value.role, "custom/")].name : each.value.role
  member  = google_service_account.function[each.value.fn].member
}

resource "google_cloud_run_v2_service_iam_member" "function_on_target" {
  for_each = local.function_target_service_grants

  project  = var.project_id
  location = local.watched[each.value.service].location
  name     = each.value.service
  role     = startswith(each.value.role, "custom/") ? google_project_iam_custom_role.canary_guard[trimprefix(each.value.role, "custom/")].name : each.value.role
  member   = google_service_account.function[each.value.fn].member
}

resource "google_service_account_iam_member" "traffic_updater_act_as_target_runtime" {
  for_each = local.act_as_grants

  service_account_id = "projects/${var.project_id}/serviceAccounts/${each.value.account}"
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.function[each.value.fn].member
}

resource "google_secret_manager_secret_iam_member" "chat_webhook" {
  for_each = local.chat_webhook_enabled ? local.chat_notifiers : toset([])

  project   = var.project_id
  secret_id = var.chat_webhook_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.key].member
}

# --- The build identity --------------------------------------------------------------------

resource "google_project_iam_member" "build" {
  for_each = toset(local.build_project_roles)

  project = var.project_id
  role    = each.value
  member  = google_service_account.build.member
}

# The source zip Terraform uploads (source.tf).
resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# The copy Cloud Build actually fetches: objects of gcf-v2-sources-NUMBER-REGION only.
resource "google_project_iam_member" "build_reads_staged_source" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member

  condition {
    title       = "gcf-v2-sources objects only"
    description = "Function sources that Cloud Functions stages for its builds in ${var.region}."
    expression  = "resource.type == \"storage.googleapis.com/Object\" && resource.name.startsWith(\"${local.build_staged_source_prefix}\")"
  }
}

# --- Callers: invoker on exactly their function ----------------------------------------

resource "google_cloud_run_v2_service_iam_member" "caller_invokes_function" {
  for_each = local.callers

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function[each.value.function].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.caller[each.key].member
}

# Opt-in, for projects whose Pub/Sub service agent was enabled on or before 8 April 2021: the
# agent signs each push (delivery.tf) with an OIDC token of the push identity, and such old
# agents lack the permission to (Pub/Sub's push authentication docs). Granted on the three push
# identities only, not on the project.
resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  for_each = var.grant_pubsub_agent_token_creator ? toset(["alerts_trigger", "rollback_trigger", "notify_push", "checkpoint_push"]) : toset([])

  service_account_id = google_service_account.caller[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# Emergency rollback: callable by the listed members and nobody else.
resource "google_cloud_run_v2_service_iam_member" "oncall_invokes_emergency_rollback" {
  for_each = toset(var.emergency_rollback_members)

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function["emergency_rollback"].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# The canary uptime check authenticates as the Monitoring service agent (OIDC token). A grant
# to an agent that does not exist yet is refused: it waits for time_sleep.monitoring_agent.
resource "google_cloud_run_v2_service_iam_member" "uptime_check_invokes_target" {
  for_each = var.uptime_check_authenticated ? local.uptime_checked : {}

  project  = var.project_id
  location = each.value.location
  name     = each.key
  role     = "roles/run.invoker"
  member   = local.monitoring_notification_agent

  depends_on = [time_sleep.monitoring_agent]
}
