"""What the stack, the handler, the task client, local mode and the policy pack agree on, written once.

Standard library only: the handler's image, a producer's `pip install` and the policy pack's own virtualenv
all carry this package without Pulumi or a web framework.

- `outputs`      the stack's output names, the shape of each exported queue entry, and their typed reader
- `handler_env`  the handler's environment variables and the JSON shapes they carry
- `outcomes`     what the handler reports for each request, in its reply and its log entry
- `cloud_tasks`  Cloud Tasks' defaults and limits, each with its source
- `cloud_run`    the Cloud Run facts more than one package needs
- `retry`        the retry law: the backoff schedule and when retrying stops
"""
