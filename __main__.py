"""cloudrun-tasks: stack config -> settings -> the CloudRunTasks component -> stack outputs."""

import pulumi

from components.cloudrun_tasks import CloudRunTasks
from components.settings import SettingsError, load_settings, secret_config_keys, stack_config

try:
    settings = load_settings(stack_config(), pulumi.get_stack(), secret_keys=secret_config_keys())
except SettingsError as err:
    # A user error: show the problems, not a Python traceback, before any resource is registered.
    raise pulumi.RunError(str(err)) from None

for warning in settings.warnings:
    pulumi.log.warn(warning)

tasks = CloudRunTasks("tasks", settings)
for name, value in tasks.exports.items():
    pulumi.export(name, value)
