"""cloudrun-tasks-deployer: the keyless identity GitHub Actions deploys with, once per Google Cloud project.

Run by an admin (see README, "Delivery pipeline"): stack config -> args -> DeployerIdentity -> the
values the workflow's auth steps take (the deployer's account for `pulumi up`, the read-only one for
pull requests' previews).
"""

import sys
from pathlib import Path

import pulumi

# Pulumi puts only this directory on the import path; the components live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.deployer import DeployerIdentity, DeployerIdentityArgs
from components.settings import SettingsError, load_deployer_settings, stack_config

try:
    args = DeployerIdentityArgs.of(load_deployer_settings(stack_config()))
except SettingsError as err:
    # A user error: show the problems, not a Python traceback, before any resource is registered.
    raise pulumi.RunError(str(err)) from None

deployer = DeployerIdentity("deployer", args)
# Named after google-github-actions/auth's inputs, which take them as they are.
pulumi.export("workload_identity_provider", deployer.workload_identity_provider)
pulumi.export("service_account", deployer.service_account)
pulumi.export("preview_service_account", deployer.preview_service_account)
