"""The policy pack, as the Pulumi CLI runs it: `pulumi preview --policy-pack policy` (from the project root)."""

from pulumi_policy import PolicyPack

from guardrails.pack import PACK_NAME, POLICIES

PolicyPack(name=PACK_NAME, policies=POLICIES)
