"""A producer stack: deploys a service that creates tasks on the cloudrun-tasks stack's queues.

It reads the tasks stack through a StackReference, checks the outputs' shape with `StackOutputs`
(so a renamed output fails this preview, not a request in production), and hands the whole
document to its service in one environment variable, where the task client reads it.
"""

import json

import pulumi
import pulumi_gcp as gcp

from contract.outputs import OUTPUTS_ENV, StackOutputs

config = pulumi.Config()
tasks_stack = pulumi.StackReference(config.require("tasksStack"))
document = tasks_stack.outputs
checked = document.apply(StackOutputs.from_mapping)

producer = gcp.cloudrunv2.Service(
    "producer",
    project=checked.apply(lambda o: o.project),
    location=checked.apply(lambda o: o.location),
    deletion_protection=False,
    template=gcp.cloudrunv2.ServiceTemplateArgs(
        service_account=config.require("producerServiceAccount"),
        containers=[
            gcp.cloudrunv2.ServiceTemplateContainerArgs(
                image=config.require("producerImage"),
                envs=[
                    gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(
                        name=OUTPUTS_ENV, value=document.apply(lambda d: json.dumps(d, sort_keys=True))
                    )
                ],
            )
        ],
    ),
)

pulumi.export("producer_service", producer.name)
pulumi.export("default_queue_path", checked.apply(lambda o: o.default_queue_path))
