"""A structural check of Strimzi resources, written from Strimzi's documented fields.

Strimzi's schemas are not copied in: these are the rules of its API reference for
``kafka.strimzi.io/v1beta2`` (Kafka, KafkaNodePool, KafkaTopic, KafkaUser) that our manifests
rely on, plus the cross-resource rules the operator enforces at reconcile time (a node pool,
topic or user names an existing cluster through ``strimzi.io/cluster``; KRaft needs
controller and broker roles; a topic cannot have more replicas than there are brokers; a
user needs the User Operator, a listener that takes its kind of login and, for ACLs, simple
authorization). Returns a list of problems, empty when the resources pass.
"""

from __future__ import annotations

import re
from typing import Any

API_VERSION = "kafka.strimzi.io/v1beta2"
CLUSTER_LABEL = "strimzi.io/cluster"
LISTENER_TYPES = {"internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"}
#: Ports Strimzi keeps for itself (replication, control plane, metrics, JMX, KRaft).
RESERVED_PORTS = {9090, 9091, 9404, 9999}
STORAGE_TYPES = {"ephemeral", "persistent-claim", "jbod"}
VOLUME_TYPES = {"ephemeral", "persistent-claim"}
ROLES = {"controller", "broker"}
_LISTENER_NAME = re.compile(r"^[a-z0-9]{1,11}$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
LISTENER_AUTHENTICATION = {"tls", "scram-sha-512", "oauth", "custom"}
KAFKA_AUTHORIZATION = {"simple", "opa", "keycloak", "custom"}
USER_AUTHENTICATION = {"tls", "tls-external", "scram-sha-512"}
ACL_RESOURCES = {"topic", "group", "cluster", "transactionalId"}
ACL_PATTERNS = {"literal", "prefix"}
ACL_TYPES = {"allow", "deny"}
ACL_OPERATIONS = {
    "Read",
    "Write",
    "Create",
    "Delete",
    "Alter",
    "Describe",
    "ClusterAction",
    "AlterConfigs",
    "DescribeConfigs",
    "IdempotentWrite",
    "All",
}


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _metadata(doc: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        problems.append(f"{where}: metadata.name is required")
        return {}
    if not _DNS_SUBDOMAIN.fullmatch(meta["name"]):
        problems.append(f"{where}: metadata.name is not a DNS subdomain")
    return meta


def _storage(storage: Any, where: str, problems: list[str]) -> None:
    if not isinstance(storage, dict) or storage.get("type") not in STORAGE_TYPES:
        problems.append(f"{where}: storage.type must be one of {sorted(STORAGE_TYPES)}")
        return
    volumes = [storage]
    if storage["type"] == "jbod":
        volumes = storage.get("volumes") or []
        if not isinstance(volumes, list) or not volumes:
            problems.append(f"{where}: jbod storage needs volumes")
            return
        ids = [v.get("id") for v in volumes if isinstance(v, dict)]
        if any(not _int(i) or i < 0 for i in ids) or len(set(ids)) != len(volumes):
            problems.append(f"{where}: every jbod volume needs a distinct integer id")
        shared = [v for v in volumes if isinstance(v, dict) and "kraftMetadata" in v]
        if len(shared) > 1 or any(v["kraftMetadata"] != "shared" for v in shared):
            problems.append(f"{where}: at most one volume has kraftMetadata: shared")
    for volume in volumes:
        if not isinstance(volume, dict) or volume.get("type") not in VOLUME_TYPES:
            problems.append(f"{where}: volume type must be one of {sorted(VOLUME_TYPES)}")
            continue
        if volume["type"] == "persistent-claim":
            size = volume.get("size")
            if not isinstance(size, str) or not _QUANTITY.fullmatch(size):
                problems.append(f"{where}: persistent-claim needs a size (a quantity)")
            if not isinstance(volume.get("deleteClaim", False), bool):
                problems.append(f"{where}: deleteClaim must be a boolean")


def _kafka(doc: dict[str, Any], where: str, problems: list[str]) -> None:
    spec = doc.get("spec")
    kafka = spec.get("kafka") if isinstance(spec, dict) else None
    if not isinstance(kafka, dict):
        problems.append(f"{where}: spec.kafka is required")
        return
    if "version" in kafka and not re.fullmatch(r"\d+\.\d+\.\d+", str(kafka["version"])):
        problems.append(f"{where}: spec.kafka.version must be x.y.z")
    listeners = kafka.get("listeners")
    if not isinstance(listeners, list) or not listeners:
        problems.append(f"{where}: spec.kafka.listeners is required")
        listeners = []
    names, ports = set(), set()
    for listener in listeners:
        if not isinstance(listener, dict):
            problems.append(f"{where}: a listener must be an object")
            continue
        name, port = listener.get("name"), listener.get("port")
        if not isinstance(name, str) or not _LISTENER_NAME.fullmatch(name):
            problems.append(f"{where}: listener name must match {_LISTENER_NAME.pattern}")
        if not _int(port) or port < 9092 or port in RESERVED_PORTS:
            problems.append(f"{where}: listener {name} port must be >= 9092 and not reserved")
        if listener.get("type") not in LISTENER_TYPES:
            problems.append(
                f"{where}: listener {name} type must be one of {sorted(LISTENER_TYPES)}"
            )
        if not isinstance(listener.get("tls"), bool):
            problems.append(f"{where}: listener {name} needs tls: true|false")
        auth = listener.get("authentication")
        if auth is not None and (
            not isinstance(auth, dict) or auth.get("type") not in LISTENER_AUTHENTICATION
        ):
            problems.append(
                f"{where}: listener {name} authentication.type must be one of "
                f"{sorted(LISTENER_AUTHENTICATION)}"
            )
        if name in names or port in ports:
            problems.append(f"{where}: listener names and ports must be unique")
        names.add(name)
        ports.add(port)
    _authorization(kafka.get("authorization"), where, problems)
    config = kafka.get("config", {})
    if not isinstance(config, dict):
        problems.append(f"{where}: spec.kafka.config must be a map")
    elif any(not isinstance(v, str | int | float | bool) for v in config.values()):
        problems.append(f"{where}: spec.kafka.config values must be scalars")
    for key in ("replicas", "storage"):
        if key in kafka:
            problems.append(f"{where}: spec.kafka.{key} belongs in a KafkaNodePool")
    if "zookeeper" in spec:
        problems.append(f"{where}: spec.zookeeper has no place in a KRaft cluster")
    operator = spec.get("entityOperator")
    for part in ("topicOperator", "userOperator"):
        if operator is not None and (
            not isinstance(operator, dict) or not isinstance(operator.get(part, {}), dict)
        ):
            problems.append(f"{where}: entityOperator.{part} must be an object")


def _authorization(authorization: Any, where: str, problems: list[str]) -> None:
    if authorization is None:
        return
    if not isinstance(authorization, dict) or authorization.get("type") not in KAFKA_AUTHORIZATION:
        problems.append(
            f"{where}: spec.kafka.authorization.type must be one of {sorted(KAFKA_AUTHORIZATION)}"
        )
        return
    supers = authorization.get("superUsers", [])
    if not isinstance(supers, list) or not all(isinstance(u, str) and u for u in supers):
        problems.append(f"{where}: spec.kafka.authorization.superUsers must list user names")


def _cluster_spec(
    doc: dict[str, Any], meta: dict[str, Any], where: str, problems: list[str]
) -> dict[str, Any] | None:
    """What every resource of the cluster (node pool, topic, user) needs: the cluster's
    label and a spec, which is returned."""
    if not (meta.get("labels") or {}).get(CLUSTER_LABEL):
        problems.append(f"{where}: label {CLUSTER_LABEL} is required")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        problems.append(f"{where}: spec is required")
        return None
    return spec


def _node_pool(doc: dict[str, Any], meta: dict[str, Any], where: str, problems: list[str]) -> None:
    spec = _cluster_spec(doc, meta, where, problems)
    if spec is None:
        return
    if not _int(spec.get("replicas")) or spec["replicas"] < 0:
        problems.append(f"{where}: spec.replicas must be an integer >= 0")
    roles = spec.get("roles")
    if not isinstance(roles, list) or not roles or not set(roles) <= ROLES:
        problems.append(f"{where}: spec.roles must be a non-empty subset of {sorted(ROLES)}")
    _storage(spec.get("storage"), where, problems)


def _topic(doc: dict[str, Any], meta: dict[str, Any], where: str, problems: list[str]) -> None:
    spec = _cluster_spec(doc, meta, where, problems)
    if spec is None:
        return
    for key in ("partitions", "replicas"):
        if key in spec and (not _int(spec[key]) or spec[key] < 1):
            problems.append(f"{where}: spec.{key} must be an integer >= 1")
    if "topicName" in spec and not re.fullmatch(r"[A-Za-z0-9._\-]{1,249}", spec["topicName"]):
        problems.append(f"{where}: spec.topicName is not a legal Kafka topic name")
    config = spec.get("config", {})
    if not isinstance(config, dict) or any(
        not isinstance(v, str | int | float | bool) for v in config.values()
    ):
        problems.append(f"{where}: spec.config must map names to scalars")
        config = {}
    policy = config.get("cleanup.policy")
    if policy is not None and not set(str(policy).split(",")) <= {"delete", "compact"}:
        problems.append(f"{where}: cleanup.policy must be delete and/or compact")
    isr, replicas = config.get("min.insync.replicas"), spec.get("replicas")
    if _int(isr) and _int(replicas) and isr > replicas:
        problems.append(f"{where}: min.insync.replicas exceeds replicas")


def _user(doc: dict[str, Any], meta: dict[str, Any], where: str, problems: list[str]) -> None:
    spec = _cluster_spec(doc, meta, where, problems)
    if spec is None:
        return
    auth = spec.get("authentication")
    if auth is not None and (
        not isinstance(auth, dict) or auth.get("type") not in USER_AUTHENTICATION
    ):
        problems.append(
            f"{where}: spec.authentication.type must be one of {sorted(USER_AUTHENTICATION)}"
        )
    authorization = spec.get("authorization")
    if authorization is None:
        return
    if not isinstance(authorization, dict) or authorization.get("type") != "simple":
        problems.append(f"{where}: spec.authorization.type must be simple")
        return
    rules = authorization.get("acls")
    if not isinstance(rules, list):
        problems.append(f"{where}: spec.authorization.acls must be a list")
        return
    for index, rule in enumerate(rules):
        _acl_rule(rule, f"{where}: acls[{index}]", problems)


def _acl_rule(rule: Any, where: str, problems: list[str]) -> None:
    if not isinstance(rule, dict):
        problems.append(f"{where}: must be an object")
        return
    resource = rule.get("resource")
    if not isinstance(resource, dict) or resource.get("type") not in ACL_RESOURCES:
        problems.append(f"{where}: resource.type must be one of {sorted(ACL_RESOURCES)}")
    else:
        if resource["type"] != "cluster" and not (
            isinstance(resource.get("name"), str) and resource["name"]
        ):
            problems.append(f"{where}: a {resource['type']} resource needs a name")
        if resource.get("patternType", "literal") not in ACL_PATTERNS:
            problems.append(f"{where}: resource.patternType must be one of {sorted(ACL_PATTERNS)}")
    operations = rule.get("operations")
    if "operation" in rule:
        problems.append(f"{where}: operation is deprecated: use operations")
    if not isinstance(operations, list) or not operations or not set(operations) <= ACL_OPERATIONS:
        problems.append(
            f"{where}: operations must be a non-empty subset of {sorted(ACL_OPERATIONS)}"
        )
    if rule.get("type", "allow") not in ACL_TYPES:
        problems.append(f"{where}: type must be allow or deny")
    if not isinstance(rule.get("host", "*"), str):
        problems.append(f"{where}: host must be a string")


def check(docs: list[dict[str, Any]], *, whole: bool = True) -> list[str]:
    """Problems of the Strimzi resources in ``docs``.

    ``whole``: the documents are one deployable unit, so cross-resource rules apply too.
    """
    problems: list[str] = []
    clusters: dict[tuple[str | None, str], dict[str, Any]] = {}
    pools: list[dict[str, Any]] = []
    topic_docs: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    for doc in docs:
        kind = doc.get("kind")
        group = str(doc.get("apiVersion", "")).split("/")[0]
        if group != "kafka.strimzi.io":
            continue
        where = f"{kind}/{(doc.get('metadata') or {}).get('name')}"
        if doc.get("apiVersion") != API_VERSION:
            problems.append(f"{where}: apiVersion must be {API_VERSION}")
        if kind not in KINDS:
            problems.append(f"{where}: unexpected Strimzi kind")
            continue
        meta = _metadata(doc, where, problems)
        if kind == "Kafka":
            _kafka(doc, where, problems)
            clusters[(meta.get("namespace"), meta.get("name", ""))] = doc
        elif kind == "KafkaNodePool":
            _node_pool(doc, meta, where, problems)
            pools.append(doc)
        elif kind == "KafkaTopic":
            _topic(doc, meta, where, problems)
            topic_docs.append(doc)
        else:
            _user(doc, meta, where, problems)
            users.append(doc)
    if not whole:
        return problems

    brokers: dict[tuple[str | None, str], int] = {}
    for key in clusters:
        mine = [p for p in pools if _cluster_of(p) == key]
        roles = [r for p in mine for r in p["spec"].get("roles", [])]
        if "controller" not in roles or "broker" not in roles:
            problems.append(
                f"Kafka/{key[1]}: KRaft needs node pools with controller and broker roles"
            )
        controllers = sum(
            p["spec"]["replicas"] for p in mine if "controller" in p["spec"].get("roles", [])
        )
        if controllers % 2 == 0:
            problems.append(f"Kafka/{key[1]}: an odd number of controllers keeps a quorum")
        brokers[key] = sum(
            p["spec"]["replicas"] for p in mine if "broker" in p["spec"].get("roles", [])
        )
        config = clusters[key]["spec"]["kafka"].get("config", {})
        for name in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
        ):
            if _int(config.get(name)) and config[name] > brokers[key]:
                problems.append(f"Kafka/{key[1]}: {name} exceeds the {brokers[key]} brokers")
    for doc in pools + topic_docs:
        key = _cluster_of(doc)
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if key not in clusters:
            problems.append(f"{where}: no Kafka named {key[1]!r} in namespace {key[0]!r}")
            continue
        replicas = doc["spec"].get("replicas")
        if doc["kind"] == "KafkaTopic" and _int(replicas) and replicas > brokers[key]:
            problems.append(f"{where}: {replicas} replicas but {brokers[key]} brokers")
    names = [
        (d["metadata"].get("namespace"), d["spec"].get("topicName", d["metadata"]["name"]))
        for d in topic_docs
    ]
    if len(set(names)) != len(names):
        problems.append("two KafkaTopics name the same topic")
    for user in users:
        key = _cluster_of(user)
        if key in clusters:
            problems += _user_fits_cluster(user, clusters[key])
        else:
            problems.append(f"KafkaUser/{user['metadata']['name']}: no Kafka named {key[1]!r}")
    return problems


def _user_fits_cluster(user: dict[str, Any], cluster: dict[str, Any]) -> list[str]:
    """What the operator needs to reconcile the user and what the brokers need to use it."""
    where = f"KafkaUser/{user['metadata']['name']}"
    spec, kafka = user.get("spec") or {}, cluster["spec"]["kafka"]
    problems = []
    if "userOperator" not in (cluster["spec"].get("entityOperator") or {}):
        problems.append(f"{where}: the Kafka has no entityOperator.userOperator")
    login = (spec.get("authentication") or {}).get("type")
    listeners = [(lst.get("authentication") or {}).get("type") for lst in kafka["listeners"]]
    if login == "scram-sha-512" and login not in listeners:
        problems.append(f"{where}: no listener takes scram-sha-512 logins")
    if "authorization" in spec and (kafka.get("authorization") or {}).get("type") != "simple":
        problems.append(f"{where}: ACLs need spec.kafka.authorization.type simple")
    return problems


def _cluster_of(doc: dict[str, Any]) -> tuple[str | None, str]:
    meta = doc["metadata"]
    return meta.get("namespace"), (meta.get("labels") or {}).get(CLUSTER_LABEL, "")
