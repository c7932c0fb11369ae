"""A go-live rehearsal on the local stack: real requests, real metrics, real alerts, one clock."""
