"""Names of the environment variables the Pulumi component sets on the handler service.

Defined once here, beside the code that reads them; the component imports these names.
Imports nothing, so the component can use it without pulling in the web framework.
"""

from typing import Final

# JSON object: physical queue id (the X-CloudTasks-QueueName header) -> {"key", "maxAttempts"}.
# The handler uses maxAttempts to know which attempt is the last one (dead-letter instead of failing).
QUEUES: Final = "TASKS_QUEUES"
# Comma-separated emails whose OIDC tokens the handler accepts when it verifies tokens itself.
INVOKER_EMAILS: Final = "TASKS_INVOKER_EMAILS"
# Cloud Run sets PORT; listed so the component refuses a user env var that would shadow it.
PORT: Final = "PORT"
