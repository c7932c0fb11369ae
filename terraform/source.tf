# The function source: one zip for all five functions, uploaded to a private bucket.
#
# Layout inside the archive (what the Python runtime expects: main.py at the root, and its
# requirements.txt beside it; main.py imports `shared.*`):
#   main.py            <- functions/main.py
#   requirements.txt   <- requirements.txt
#   shared/...         <- the whole shared/ package, policy.yaml included (no __pycache__)

locals {
  shared_source_files = sort([
    for f in fileset("${path.module}/../shared", "**") : f
    if !strcontains(f, "__pycache__") && !endswith(f, ".pyc")
  ])
}

data "archive_file" "source" {
  type             = "zip"
  output_path      = "${path.module}/build/canary-guard-source.zip"
  output_file_mode = "0644"

  source {
    content  = file("${path.module}/../functions/main.py")
    filename = "main.py"
  }

  source {
    content  = file("${path.module}/../requirements.txt")
    filename = "requirements.txt"
  }

  dynamic "source" {
    for_each = local.shared_source_files
    content {
      content  = file("${path.module}/../shared/${source.value}")
      filename = "shared/${source.value}"
    }
  }
}

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Access logs of a bucket that only Cloud Build reads function source from add nothing; Cloud Audit Logs record admin access.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.prefix}-function-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = { app = "canary-guard" }

  versioning {
    enabled = true
  }

  # Objects are named by content hash; old sources are only needed for a short rollback window.
  # Only noncurrent versions are deleted: an age rule on live objects would delete the source
  # the functions were built from, and every later apply would upload it again.
  lifecycle_rule {
    condition {
      with_state                 = "ARCHIVED"
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_object" "source" {
  # The content hash in the name makes every code change a new object, so the functions
  # are rebuilt when (and only when) the source changes.
  name   = "canary-guard-${data.archive_file.source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}
