"""The task handler: the code the Cloud Run service runs."""
