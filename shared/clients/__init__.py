"""The I/O: Firestore (the store and its parts), Cloud Run, Cloud Monitoring, Pub/Sub and the
HTTP load engine. Clients use the core's values and never import a handler."""
