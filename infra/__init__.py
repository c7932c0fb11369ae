"""What runs around the functions but is not Terraform: local stand-ins and test targets."""
