"""Pulumi components for Cloud Tasks queues pushing authenticated HTTP tasks to a private Cloud Run service.

Components take every value from their Args (never from `pulumi.Config`), so other programs can reuse them.
"""
