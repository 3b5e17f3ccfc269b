"""``spine-admin``: what only the operator does to the bus, never through the gateway.

The gateway must not hold cluster-alter rights (DESIGN §12), so credentials and ACLs are a
command-line step with the operator's Kafka login (the super user ``admin``):

    spine-admin issue-services                 every service principal: SCRAM, ACLs, files
    spine-admin issue-agent-credentials <id>   an agent principal: SCRAM and ACLs
    spine-admin revoke-agent-credentials <id>  delete its SCRAM credentials and its ACLs
    spine-admin acls [--principal NAME]        the ACL table (docs/security.md)

:mod:`.acls` is the table (pure); :mod:`.principals` applies it with confluent-kafka's
``AdminClient`` (:mod:`.scram`, :mod:`.bindings`) and writes the credentials files
(:mod:`.credentials`). The test fixtures issue through the same functions.
"""

from __future__ import annotations
