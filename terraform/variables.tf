# Inputs. Thresholds, durations and schedules are NOT here: they live in shared/policy.yaml
# (read in main.tf with yamldecode) so that a number is changed in exactly one place.

variable "project_id" {
  description = "ID of the GCP project that already runs the Cloud Run service under release; everything is created there."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 characters: lower-case letters, digits and hyphens, starting with a letter), not a project name or number."
  }
}

variable "region" {
  description = "Region for the functions, the Cloud Scheduler jobs and the source bucket, e.g. europe-west1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a GCP region such as us-central1 or europe-west1 (not a zone)."
  }
}

variable "services" {
  description = <<-EOT
    The Cloud Run services whose canary releases canary-guard guards: service name -> settings.
    Adding a service is one entry and one apply; every service shares the one pipeline (functions,
    topics, alert policies, dashboard). Per entry, all optional:
      location                = region of the service (default: var.region)
      canary_tag_url          = URL of its canary traffic tag, e.g. https://canary---my-service-abc123-ew.a.run.app;
                                empty: no uptime check, canary_down is then judged by the checkpoint only
      runtime_service_account = its runtime service account email; traffic updates need
                                iam.serviceAccountUser on exactly this account. Empty: read from the
                                service; if it sets none, the Compute Engine default account is assumed.
  EOT
  type = map(object({
    location                = optional(string, "")
    canary_tag_url          = optional(string, "")
    runtime_service_account = optional(string, "")
  }))

  validation {
    condition     = length(var.services) > 0
    error_message = "services must name at least one Cloud Run service."
  }

  validation {
    condition     = alltrue([for name in keys(var.services) : can(regex("^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$", name))])
    error_message = "Each key of services must be a Cloud Run service name: 1-49 lower-case letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }

  validation {
    condition     = alltrue([for s in values(var.services) : s.location == "" || can(regex("^[a-z]+-[a-z]+[0-9]+$", s.location))])
    error_message = "services[*].location must be empty or a GCP region such as us-central1."
  }

  validation {
    condition     = alltrue([for s in values(var.services) : s.canary_tag_url == "" || can(regex("^https://[a-z0-9][a-z0-9.-]*[a-z0-9]/?$", s.canary_tag_url))])
    error_message = "services[*].canary_tag_url must be empty or an https:// URL with a host only (no path, no query), e.g. https://canary---svc-hash-ew.a.run.app."
  }

  validation {
    condition     = alltrue([for s in values(var.services) : s.runtime_service_account == "" || can(regex("^[a-z0-9-]+@[a-z0-9.-]+\\.gserviceaccount\\.com$", s.runtime_service_account))])
    error_message = "services[*].runtime_service_account must be empty or a service account email (…@….gserviceaccount.com)."
  }
}

variable "uptime_check_authenticated" {
  description = "Send an OIDC token from the Cloud Monitoring service agent with the canary uptime check and grant that agent roles/run.invoker on the target service. Keep true unless the target service allows unauthenticated calls."
  type        = bool
  default     = true
}

variable "grant_pubsub_agent_token_creator" {
  description = "Only for projects whose Pub/Sub service agent (service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com) was enabled on or before 8 April 2021: grant it roles/iam.serviceAccountTokenCreator on the three push subscriptions' service accounts, so that it can sign the OIDC tokens of the authenticated pushes to breach_counter, rollback and notify (Pub/Sub's push authentication docs). Newer projects do not need it: leave false."
  type        = bool
  default     = false
}

variable "emergency_rollback_members" {
  description = "The ONLY principals allowed to call the emergency_rollback function and to publish to the rollback-requests topic by hand, e.g. [\"group:oncall@example.com\"]. Each entry is user:, group: or serviceAccount: followed by an email."
  type        = list(string)

  validation {
    condition     = length(var.emergency_rollback_members) > 0
    error_message = "emergency_rollback_members must list at least one principal: the on-call engineer needs a way to roll back by hand."
  }

  validation {
    condition = alltrue([
      for m in var.emergency_rollback_members : can(regex("^(user|group|serviceAccount):[^@\\s:]+@[^@\\s:]+\\.[a-z]{2,}$", m))
    ])
    error_message = "Each emergency_rollback_members entry must be user:EMAIL, group:EMAIL or serviceAccount:EMAIL; allUsers, allAuthenticatedUsers and domain: are refused."
  }
}

variable "chat_webhook_secret_id" {
  description = "Optional Secret Manager secret ID (in this project) whose latest version is the chat webhook URL; it becomes CHAT_WEBHOOK_URL of the notify function, the only one that talks to the webhook. Empty: notifications are published but not posted."
  type        = string
  default     = ""

  validation {
    condition     = var.chat_webhook_secret_id == "" || can(regex("^[A-Za-z0-9_-]{1,255}$", var.chat_webhook_secret_id))
    error_message = "chat_webhook_secret_id must be empty or a Secret Manager secret ID (letters, digits, _ and -), not a full resource name."
  }
}

variable "prefix" {
  description = "Short prefix for the functions, service accounts, bucket, jobs and dead-letter topics (service account IDs are at most 30 characters)."
  type        = string
  default     = "cg"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,7}$", var.prefix))
    error_message = "prefix must be 1-8 lower-case letters or digits, starting with a letter."
  }
}

variable "alerts_topic_name" {
  description = "Pub/Sub topic the Cloud Monitoring notification channel publishes incidents to (pushed to breach_counter)."
  type        = string
  default     = "canary-alerts"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$", var.alerts_topic_name)) && !startswith(lower(var.alerts_topic_name), "goog")
    error_message = "alerts_topic_name must be a Pub/Sub topic ID: 3-255 characters, starting with a letter, not with \"goog\"."
  }
}

variable "rollback_topic_name" {
  description = "Pub/Sub topic for rollback requests (pushed to rollback); passed to the functions as ROLLBACK_TOPIC."
  type        = string
  default     = "canary-rollback-requests"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$", var.rollback_topic_name)) && !startswith(lower(var.rollback_topic_name), "goog")
    error_message = "rollback_topic_name must be a Pub/Sub topic ID: 3-255 characters, starting with a letter, not with \"goog\"."
  }
}

variable "checkpoint_topic_name" {
  description = "Pub/Sub topic the checkpoint sends each watched service's minute to (pushed to checkpoint_worker); passed to it as CHECKPOINT_TOPIC."
  type        = string
  default     = "canary-checkpoints"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$", var.checkpoint_topic_name)) && !startswith(lower(var.checkpoint_topic_name), "goog")
    error_message = "checkpoint_topic_name must be a Pub/Sub topic ID: 3-255 characters, starting with a letter, not with \"goog\"."
  }
}

variable "checkpoint_worker_max_instances" {
  description = "Most checkpoint_worker instances at once (one message each): a worker judges one service's minute in about 2-4 s when Google's APIs answer in 150 ms, so 60 judge 300 services in about 20 s."
  type        = number
  default     = 60

  validation {
    condition     = var.checkpoint_worker_max_instances >= 1 && var.checkpoint_worker_max_instances <= 100
    error_message = "checkpoint_worker_max_instances must be between 1 and 100."
  }
}

variable "notify_topic_name" {
  description = "Pub/Sub topic the functions publish their decisions' notifications to (pushed to notify); passed to them as NOTIFY_TOPIC."
  type        = string
  default     = "canary-notifications"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$", var.notify_topic_name)) && !startswith(lower(var.notify_topic_name), "goog")
    error_message = "notify_topic_name must be a Pub/Sub topic ID: 3-255 characters, starting with a letter, not with \"goog\"."
  }
}

variable "chat_format" {
  description = "How notify formats messages for the webhook in chat_webhook_secret_id: slack (Slack incoming webhook) or google_chat (Google Chat space webhook)."
  type        = string
  default     = "slack"

  validation {
    condition     = contains(["slack", "google_chat"], var.chat_format)
    error_message = "chat_format must be slack or google_chat."
  }
}

variable "dead_letter_max_delivery_attempts" {
  description = "Deliveries of one message to breach_counter or rollback before it goes to the dead-letter topic (Pub/Sub allows 5-100)."
  type        = number
  default     = 10

  validation {
    condition     = var.dead_letter_max_delivery_attempts >= 5 && var.dead_letter_max_delivery_attempts <= 100 && floor(var.dead_letter_max_delivery_attempts) == var.dead_letter_max_delivery_attempts
    error_message = "dead_letter_max_delivery_attempts must be a whole number from 5 to 100."
  }
}

variable "decision_retention_days" {
  description = "Days each decision record (a rollout's history: steps, verdicts, rollbacks and who asked) is kept before Firestore's TTL deletes it; 0 keeps the history for ever. Dedupe markers always expire 30 days after they are written."
  type        = number
  default     = 400

  validation {
    condition     = var.decision_retention_days >= 0 && floor(var.decision_retention_days) == var.decision_retention_days && var.decision_retention_days <= 36500
    error_message = "decision_retention_days must be a whole number of days from 0 (keep for ever) to 36500."
  }
}

variable "python_runtime" {
  description = "Cloud Functions Python runtime."
  type        = string
  default     = "python312"

  validation {
    condition     = contains(["python311", "python312", "python313"], var.python_runtime)
    error_message = "python_runtime must be python311, python312 or python313."
  }
}

variable "load_test_timeout_s" {
  description = "Timeout of the load_test function in seconds; also passed to it as FUNCTION_TIMEOUT_S so it bounds its own run."
  type        = number
  default     = 540

  validation {
    condition     = var.load_test_timeout_s >= 60 && var.load_test_timeout_s <= 3600 && floor(var.load_test_timeout_s) == var.load_test_timeout_s
    error_message = "load_test_timeout_s must be a whole number of seconds from 60 to 3600 (the limit for HTTP functions)."
  }
}

variable "load_test_memory_mb" {
  description = "Memory of the load_test function in MiB; also passed to it as FUNCTION_MEMORY_MB."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192], var.load_test_memory_mb)
    error_message = "load_test_memory_mb must be one of 256, 512, 1024, 2048, 4096, 8192."
  }
}

variable "checkpoint_paused" {
  description = "Create the checkpoint Cloud Scheduler job paused (it runs every minute per the policy file; with no running rollout a checkpoint does nothing)."
  type        = bool
  default     = false
}

variable "load_test_paused" {
  description = "Create the nightly load-test Cloud Scheduler job paused."
  type        = bool
  default     = false
}

variable "create_firestore_database" {
  description = "Create the (default) Firestore database in native mode. false: the project already has one (it must be FIRESTORE_NATIVE)."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Firestore location (a region such as europe-west1 or a multi-region such as eur3). null: var.region."
  type        = string
  default     = null
}

variable "firestore_delete_protection" {
  description = "Turn on Firestore delete protection (terraform destroy then leaves the database; deletion_policy is ABANDON either way)."
  type        = bool
  default     = true
}

variable "enable_apis" {
  description = "Enable the APIs the pipeline needs. They are never disabled on destroy."
  type        = bool
  default     = true
}
