terraform {
  # 1.5: check blocks, strcontains(); terraform_data needs 1.4.
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.9: alert_strategy.notification_prompts (the CLOSED notification) first appears.
      version = ">= 6.9, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3.0"
    }
    # time_sleep: the first apply waits for Google's service agents and IAM grants (main.tf).
    time = {
      source  = "hashicorp/time"
      version = ">= 0.9, < 1.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
