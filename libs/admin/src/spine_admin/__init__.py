"""``spine-admin``: what only the operator does to the bus, never through the gateway.

The gateway must not hold cluster-alter rights (DESIGN §12), so issuing an agent is a
command-line step with the operator's Kafka credentials:

    spine-admin issue-agent <agent_id> [--owner <user_id>|system] [--key-dir .spine/agents]
    spine-admin revoke-agent <agent_id> [--delete-key]
    spine-admin show-agent <agent_id>

:func:`~spine_admin.issue.issue` is the one code path: ``make agent-credentials``,
``make up``, compose's ``init`` job and the test fixtures all go through it.
"""

from __future__ import annotations

from .issue import AgentShown, Issued, IssueError, issue, revoke, show

__all__ = ["AgentShown", "IssueError", "Issued", "issue", "revoke", "show"]
