"""The Pulumi type tokens the pack inspects, as pulumi-gcp 10.2 registers them, and a readable kind for each.

Tokens are compared case-insensitively: older pulumi-gcp spelled the service account module `serviceAccount`
(`gcp:serviceAccount/key:Key` is still an alias of `gcp:serviceaccount/key:Key`), and a program pinned to one
of those versions must not slip past the pack.
"""

from __future__ import annotations

from collections.abc import Iterable

RUN_SERVICE = "gcp:cloudrunv2/service:Service"
RUN_SERVICE_V1 = "gcp:cloudrun/service:Service"
RUN_SERVICE_IAM_MEMBER = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
RUN_SERVICE_IAM_BINDING = "gcp:cloudrunv2/serviceIamBinding:ServiceIamBinding"
RUN_SERVICE_IAM_POLICY = "gcp:cloudrunv2/serviceIamPolicy:ServiceIamPolicy"
RUN_V1_IAM_MEMBER = "gcp:cloudrun/iamMember:IamMember"
RUN_V1_IAM_BINDING = "gcp:cloudrun/iamBinding:IamBinding"
RUN_V1_IAM_POLICY = "gcp:cloudrun/iamPolicy:IamPolicy"

QUEUE = "gcp:cloudtasks/queue:Queue"
QUEUE_IAM_MEMBER = "gcp:cloudtasks/queueIamMember:QueueIamMember"
QUEUE_IAM_BINDING = "gcp:cloudtasks/queueIamBinding:QueueIamBinding"
QUEUE_IAM_POLICY = "gcp:cloudtasks/queueIamPolicy:QueueIamPolicy"

PROJECT_IAM_MEMBER = "gcp:projects/iAMMember:IAMMember"
PROJECT_IAM_BINDING = "gcp:projects/iAMBinding:IAMBinding"
PROJECT_IAM_POLICY = "gcp:projects/iAMPolicy:IAMPolicy"
FOLDER_IAM_MEMBER = "gcp:folder/iAMMember:IAMMember"
FOLDER_IAM_BINDING = "gcp:folder/iAMBinding:IAMBinding"
FOLDER_IAM_POLICY = "gcp:folder/iAMPolicy:IAMPolicy"
ORGANIZATION_IAM_MEMBER = "gcp:organizations/iAMMember:IAMMember"
ORGANIZATION_IAM_BINDING = "gcp:organizations/iAMBinding:IAMBinding"
ORGANIZATION_IAM_POLICY = "gcp:organizations/iAMPolicy:IAMPolicy"

SERVICE_ACCOUNT_KEY = "gcp:serviceaccount/key:Key"
PROJECT_API = "gcp:projects/service:Service"


def token_set(tokens: Iterable[str]) -> frozenset[str]:
    """A set of tokens for `is_one_of`."""
    return frozenset(token.lower() for token in tokens)


def is_one_of(resource_type: str, tokens: frozenset[str]) -> bool:
    return resource_type.lower() in tokens


RUN_SERVICES = token_set([RUN_SERVICE, RUN_SERVICE_V1])
RUN_IAM = token_set(
    [
        RUN_SERVICE_IAM_MEMBER,
        RUN_SERVICE_IAM_BINDING,
        RUN_SERVICE_IAM_POLICY,
        RUN_V1_IAM_MEMBER,
        RUN_V1_IAM_BINDING,
        RUN_V1_IAM_POLICY,
    ]
)
# IAM above any single resource: a role granted here applies to every resource below it.
HIERARCHY_IAM = token_set(
    [
        PROJECT_IAM_MEMBER,
        PROJECT_IAM_BINDING,
        PROJECT_IAM_POLICY,
        FOLDER_IAM_MEMBER,
        FOLDER_IAM_BINDING,
        FOLDER_IAM_POLICY,
        ORGANIZATION_IAM_MEMBER,
        ORGANIZATION_IAM_BINDING,
        ORGANIZATION_IAM_POLICY,
    ]
)
QUEUE_IAM = token_set([QUEUE_IAM_MEMBER, QUEUE_IAM_BINDING, QUEUE_IAM_POLICY])
QUEUES = token_set([QUEUE])
SERVICE_ACCOUNT_KEYS = token_set([SERVICE_ACCOUNT_KEY])
PROJECT_APIS = token_set([PROJECT_API])

_KINDS = {
    RUN_SERVICE: "Cloud Run service",
    RUN_SERVICE_V1: "Cloud Run (v1) service",
    RUN_SERVICE_IAM_MEMBER: "Cloud Run IAM member",
    RUN_SERVICE_IAM_BINDING: "Cloud Run IAM binding",
    RUN_SERVICE_IAM_POLICY: "Cloud Run IAM policy",
    RUN_V1_IAM_MEMBER: "Cloud Run (v1) IAM member",
    RUN_V1_IAM_BINDING: "Cloud Run (v1) IAM binding",
    RUN_V1_IAM_POLICY: "Cloud Run (v1) IAM policy",
    QUEUE: "Cloud Tasks queue",
    QUEUE_IAM_MEMBER: "queue IAM member",
    QUEUE_IAM_BINDING: "queue IAM binding",
    QUEUE_IAM_POLICY: "queue IAM policy",
    PROJECT_IAM_MEMBER: "project IAM member",
    PROJECT_IAM_BINDING: "project IAM binding",
    PROJECT_IAM_POLICY: "project IAM policy",
    FOLDER_IAM_MEMBER: "folder IAM member",
    FOLDER_IAM_BINDING: "folder IAM binding",
    FOLDER_IAM_POLICY: "folder IAM policy",
    ORGANIZATION_IAM_MEMBER: "organization IAM member",
    ORGANIZATION_IAM_BINDING: "organization IAM binding",
    ORGANIZATION_IAM_POLICY: "organization IAM policy",
    SERVICE_ACCOUNT_KEY: "service account key",
    PROJECT_API: "API enablement",
}
_KIND_BY_TOKEN = {token.lower(): kind for token, kind in _KINDS.items()}


def describe(resource_type: str, name: str) -> str:
    """How a message names a resource: its kind and its Pulumi name, e.g. "Cloud Tasks queue 'tasks-emails'"."""
    return f"{_KIND_BY_TOKEN.get(resource_type.lower(), resource_type)} '{name}'"
