"""``spine-admin``: what only the operator does to the bus, never through the gateway.

The gateway must not hold cluster-alter rights (DESIGN §12), so issuing is a command-line
step with the operator's Kafka login (the super user ``admin`` on a secured broker):

    spine-admin issue-services                 static topics, then every service principal
    spine-admin issue-agent <id> [--owner U]   signing key, tasks topic, principal, record
    spine-admin revoke-agent <id>              key forgotten on the bus, principal deleted
    spine-admin show-agent <id>                the agent's catalogue entry and key
    spine-admin acls [--principal NAME]        the ACL table (docs/security.md)

:mod:`.issue` issues an agent in steps; :mod:`.acls` is the ACL table (pure);
:mod:`.principals` applies it with confluent-kafka's ``AdminClient`` (:mod:`.scram`,
:mod:`.bindings`) and writes the credentials files (:mod:`.credentials`). ``make up``,
compose, and the test fixtures go through the same functions.
"""

from __future__ import annotations

from .issue import AgentShown, Issued, IssueError, issue, revoke, show

__all__ = ["AgentShown", "IssueError", "Issued", "issue", "revoke", "show"]
