"""The cloudrun-tasks-guardrails CrossGuard policy pack: validators as plain functions, and the pack's policies.

One module per concern (cloud_run, iam, queues, apis, delivery); `properties` reads values that may be unknown
during preview; `pack` lists the policies with their enforcement levels and config.
"""
