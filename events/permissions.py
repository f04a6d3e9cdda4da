"""Who may publish and subscribe to what on NATS: one user per role, as data.

`render()` writes the nats-server `accounts` block that deploy/nats/cluster/auth.conf
holds and the tests start nats-server with; a test keeps the two equal. Every subject
a role needs is listed here, the `$JS.API` requests nats-py sends for its own
consumers, buckets and streams included, so a role that reaches for anything else is
refused by the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from events import jetstream as defs
from events import subjects

ACCOUNT = "BATCHYARD"


@dataclass(frozen=True)
class Grant:
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()

    def __or__(self, other: Grant) -> Grant:
        return Grant(_union(self.publish, other.publish),
                     _union(self.subscribe, other.subscribe),
                     _union(self.deny_publish, other.deny_publish))


def _union(*parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for p in parts for s in p))


def inbox_prefix(user: str) -> str:
    """Each user's replies arrive under its own prefix, so no user can read another's
    (a `STREAM.MSG.GET` answer carries the texts of a batch)."""
    return f"_INBOX.{user}"


def _durable(c: defs.Consumer) -> Grant:
    return Grant(publish=(f"$JS.API.CONSUMER.INFO.{c.stream}.{c.name}",
                          f"$JS.API.CONSUMER.MSG.NEXT.{c.stream}.{c.name}",
                          f"$JS.ACK.{c.stream}.{c.name}.>"))


def _kv_read(bucket: str, key: str) -> Grant:
    return Grant(publish=(f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}",))


def _kv_write(bucket: str, key: str) -> Grant:
    return _kv_read(bucket, key) | Grant(publish=(f"$KV.{bucket}.{key}",))


def _kv_watch(bucket: str) -> Grant:
    # An ordered consumer: created, checked on a missed heartbeat, recreated on a gap.
    stream = f"KV_{bucket}"
    return Grant(publish=(f"$JS.API.CONSUMER.CREATE.{stream}",
                          f"$JS.API.CONSUMER.CREATE.{stream}.>",
                          f"$JS.API.CONSUMER.INFO.{stream}.*",
                          f"$JS.API.CONSUMER.DELETE.{stream}.*",
                          f"$JS.FC.{stream}.>"))


def _bind(*streams: str) -> Grant:
    return Grant(publish=tuple(f"$JS.API.STREAM.INFO.{s}" for s in streams))


def _object_read(bucket: str) -> Grant:
    stream = f"OBJ_{bucket}"
    return Grant(publish=(
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
        "$JS.API.STREAM.NAMES",  # nats-py finds an object's stream by subject
    ))


def _object_put(bucket: str) -> Grant:
    return Grant(publish=(f"$JS.API.STREAM.MSG.GET.OBJ_{bucket}",
                          f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"))


def _object_write(bucket: str) -> Grant:
    # A replaced or deleted object's chunks are purged by subject.
    return _object_read(bucket) | _object_put(bucket) | Grant(
        publish=(f"$JS.API.STREAM.PURGE.OBJ_{bucket}",))


def _pub(*names: str) -> Grant:
    return Grant(publish=names)


# What App.open binds in every pod, and the KEY_HEALTH watch every pod runs.
_POD = (_bind(f"KV_{defs.KEY_HEALTH}", f"KV_{defs.QUOTA}", f"OBJ_{defs.BATCH_INPUTS}",
              f"OBJ_{defs.BATCH_KEPT}")
        | _kv_read(defs.KEY_HEALTH, defs.KEY_HEALTH_CURRENT) | _kv_watch(defs.KEY_HEALTH)
        # the runtime dead-letters a message on its last delivery, whatever the role
        | _pub(subjects.DEAD))

# Roles that call Gemini: they park on a bad key (marking it invalid at once), read a
# batch's input back from its message or object, and keep a parked batch's input.
_GEMINI = (_pub(subjects.AUTH_FAILED, subjects.COMPLETED, subjects.SUBMIT)
           | _kv_write(defs.KEY_HEALTH, defs.KEY_HEALTH_CURRENT)
           | _kv_write(defs.QUOTA, defs.QUOTA_BATCH_CREATE)
           | Grant(publish=(f"$JS.API.STREAM.MSG.GET.{defs.BATCH}",))
           | _object_write(defs.BATCH_INPUTS) | _object_write(defs.BATCH_KEPT))

ROLES: dict[str, Grant] = {
    "submit": _POD | _GEMINI | _durable(defs.SUBMIT) | _pub(subjects.POLL),
    "poll": _POD | _GEMINI | _durable(defs.POLL),
    "key-health": (_POD | _durable(defs.KEY_ROTATED)
                   | _kv_write(defs.KEY_HEALTH, defs.KEY_HEALTH_CURRENT)
                   | _pub(subjects.KEY_VALID, subjects.KEY_INVALID)
                   | Grant(publish=(f"$JS.API.CONSUMER.INFO.{defs.BATCH_PARKED}."
                                    f"{defs.REPLAY.name}",))),
    "recovery": (_POD | _durable(defs.RECOVERY) | _durable(defs.REPLAY)
                 | _bind(defs.BATCH_PARKED) | _pub(subjects.SUBMIT, subjects.POLL)
                 | Grant(publish=tuple(f"$JS.API.STREAM.{op}.{defs.BATCH_PARKED}"
                                       for op in ("MSG.GET", "MSG.DELETE", "PURGE")))),
}


def _all_roles() -> Grant:
    out = Grant()
    for grant in ROLES.values():
        out = out | grant
    return out


USERS: dict[str, Grant] = {
    **ROLES,
    # `batchyard run all`: every role in one process
    "all": _all_roles(),
    # indexers: publish work and put large inputs, nothing else
    "producer": (_pub(subjects.SUBMIT) | _bind(f"OBJ_{defs.BATCH_INPUTS}")
                 | _object_put(defs.BATCH_INPUTS)),
    # the CLI and the setup Job: provision, inspect, replay, re-drive; never forge a key
    # verdict, never delete a stream
    "operator": Grant(
        publish=("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>",
                 subjects.SUBMIT, subjects.POLL, subjects.DEAD, subjects.KEY_ROTATED),
        subscribe=("_INBOX.>",),
        deny_publish=(subjects.KEY_VALID, subjects.KEY_INVALID, "$JS.API.STREAM.DELETE.>")),
    # KEDA's NATS JetStream scaler: the lag of the two consumers it scales on
    "keda": Grant(publish=tuple(f"$JS.API.CONSUMER.INFO.{c.stream}.{c.name}"
                                for c in (defs.SUBMIT, defs.POLL))),
}


def password_variable(user: str) -> str:
    """The environment variable nats-server reads the user's password from."""
    return "NATS_PASSWORD_" + user.upper().replace("-", "_")


def grant(user: str) -> Grant:
    """The user's grant, its own reply inbox included."""
    g = USERS[user]
    if not g.subscribe:
        g = g | Grant(subscribe=(f"{inbox_prefix(user)}.>",))
    return g


def _list(subjects_: tuple[str, ...], indent: str) -> str:
    return "[\n" + "".join(f'{indent}  "{s}"\n' for s in subjects_) + f"{indent}]"


def render() -> str:
    """The nats-server `accounts` block for every user, passwords from the environment."""
    out = [
        "# Generated by events/permissions.py (`make streams-export`); a test keeps it",
        "# equal. Each password is read from the server's environment, e.g.",
        f"# {password_variable('submit')} for user submit (a bcrypt hash made with",
        "# `nats server passwd` works as well as the password itself).",
        "accounts {",
        f"  {ACCOUNT} {{",
        "    jetstream: enabled",
        "    users: [",
    ]
    for user in USERS:
        g = grant(user)
        i = " " * 14
        out.append(f"      {{ user: {user}, password: ${password_variable(user)}")
        out.append("        permissions: {")
        out.append(f"          publish: {{\n            allow: {_list(g.publish, i)}")
        if g.deny_publish:
            out.append(f"            deny: {_list(g.deny_publish, i)}")
        out.append("          }")
        out.append(f"          subscribe: {{ allow: {_list(g.subscribe, '          ')} }}")
        out.append("        }")
        out.append("      }")
    out += ["    ]", "  }", "}", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
