# Resources that became for_each instances (one resource per kind instead of one block per
# function, caller or job). These keep an existing deployment's state: without them
# `terraform apply` would destroy and re-create the functions, their callers' service
# accounts and the scheduler jobs. They may be deleted once every deployment has applied them.

moved {
  from = google_cloudfunctions2_function.breach_counter
  to   = google_cloudfunctions2_function.function["breach_counter"]
}

moved {
  from = google_cloudfunctions2_function.rollback
  to   = google_cloudfunctions2_function.function["rollback"]
}

moved {
  from = google_cloudfunctions2_function.emergency_rollback
  to   = google_cloudfunctions2_function.function["emergency_rollback"]
}

moved {
  from = google_cloudfunctions2_function.checkpoint
  to   = google_cloudfunctions2_function.function["checkpoint"]
}

moved {
  from = google_cloudfunctions2_function.load_test
  to   = google_cloudfunctions2_function.function["load_test"]
}

moved {
  from = google_service_account.alerts_trigger
  to   = google_service_account.caller["alerts_trigger"]
}

moved {
  from = google_service_account.rollback_trigger
  to   = google_service_account.caller["rollback_trigger"]
}

moved {
  from = google_service_account.checkpoint_scheduler
  to   = google_service_account.caller["checkpoint_scheduler"]
}

moved {
  from = google_service_account.load_test_scheduler
  to   = google_service_account.caller["load_test_scheduler"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.alerts_trigger_invokes_breach_counter
  to   = google_cloud_run_v2_service_iam_member.caller_invokes_function["alerts_trigger"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.rollback_trigger_invokes_rollback
  to   = google_cloud_run_v2_service_iam_member.caller_invokes_function["rollback_trigger"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.checkpoint_scheduler_invokes_checkpoint
  to   = google_cloud_run_v2_service_iam_member.caller_invokes_function["checkpoint_scheduler"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.load_test_scheduler_invokes_load_test
  to   = google_cloud_run_v2_service_iam_member.caller_invokes_function["load_test_scheduler"]
}

moved {
  from = google_cloud_scheduler_job.checkpoint
  to   = google_cloud_scheduler_job.job["checkpoint"]
}

moved {
  from = google_cloud_scheduler_job.load_test
  to   = google_cloud_scheduler_job.job["load_test"]
}

moved {
  from = terraform_data.alerts_trigger_dead_letter[0]
  to   = terraform_data.trigger_dead_letter["breach_counter"]
}

moved {
  from = terraform_data.rollback_trigger_dead_letter[0]
  to   = terraform_data.trigger_dead_letter["rollback"]
}
