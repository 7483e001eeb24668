"""Resource options shared by the components."""

from __future__ import annotations

import pulumi


def child_options(parent: pulumi.Resource, opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Options for a component's children: parented to it, and waiting for what the component waits for.

    Pulumi does not pass a component's `depends_on` on to its children, so a child that calls an API
    could otherwise be created before that API is enabled ("API has not been used in project ...").
    """
    return pulumi.ResourceOptions(parent=parent, depends_on=opts.depends_on if opts is not None else None)
