"""The policy pack, as the Pulumi CLI runs it: `pulumi preview --policy-pack policy` (from the project root)."""

import sys
from pathlib import Path

# The pack shares the project's `contract` package (standard library only: names and limits the program
# writes), which lives beside this folder. The CLI puts only this folder on the path.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack

from guardrails.pack import PACK_NAME, POLICIES

PolicyPack(name=PACK_NAME, policies=POLICIES)
