# The watched services (var.services): everything that exists once per service is derived here,
# from variables only (no resource, no data source), so the offline checks evaluate these
# locals with terraform itself (tests/tf_model.py evaluate_services).
#
# One alert policy per rule covers many services (filtered with one_of on the service name,
# grouped by service, location and revision, so each canary is still its own time series and
# its incident names its service). One policy per service and rule would need 3 policies per
# service: 300 services would pass Cloud Monitoring's 500 alert policies per project. A policy
# names at most local.services_per_alert_policy services, which keeps its filter short (each
# name is quoted into it); more services get more policies, never longer filters.

locals {
  services_per_alert_policy = 25

  watched = {
    for name, s in var.services : name => {
      location                = coalesce(s.location, var.region)
      fullname                = "projects/${var.project_id}/locations/${coalesce(s.location, var.region)}/services/${name}"
      canary_tag_url          = s.canary_tag_url
      canary_host             = trimsuffix(trimprefix(s.canary_tag_url, "https://"), "/")
      runtime_service_account = s.runtime_service_account
    }
  }

  # CANARY_SERVICES of every function (shared/config.py): full names, comma-separated.
  canary_services = join(",", sort([for s in values(local.watched) : s.fullname]))

  # "00", "01", ... -> up to services_per_alert_policy service names, and the filter naming them.
  service_groups = {
    for index, names in chunklist(sort(keys(local.watched)), local.services_per_alert_policy) :
    format("%02d", index) => {
      services = names
      # What its policies' display names show (at most 512 characters: not all the names).
      title  = "group ${format("%02d", index)}: ${length(names)} services, ${names[0]} … ${names[length(names) - 1]}"
      filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = one_of(${join(", ", [for n in names : "\"${n}\""])})"
    }
  }

  # The metric alert policies: one per rule of the policy file and group of services.
  metric_policies = {
    for pair in setproduct(keys(local.alerting.metric_conditions), keys(local.service_groups)) :
    "${pair[0]}/${pair[1]}" => { rule = pair[0], group = pair[1] }
  }

  # canary_down: an uptime check and its alert policy per service with a canary tag URL.
  uptime_checked = { for name, s in local.watched : name => s if s.canary_tag_url != "" }

  # Roles on each watched service (local.function_target_service_roles, iam.tf), one grant per
  # function, role and service.
  function_target_service_grants = {
    for triple in flatten([
      for fn, roles in local.function_target_service_roles : [
        for role in roles : [for name in keys(local.watched) : { fn = fn, role = role, service = name }]
      ]
    ]) : "${triple.fn} ${triple.role} ${triple.service}" => triple
  }

  # The daily load test: one Cloud Scheduler job per service, each its own function call, so
  # the number of services never makes one call too long.
  load_test_jobs = { for name, s in local.watched : "load_test_${name}" => { service = name, fullname = s.fullname } }
}
