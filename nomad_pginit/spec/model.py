"""What the services file says, as frozen dataclasses: the cluster's settings and the services."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final

from nomad_pginit.secret import Secret

# PostgreSQL truncates longer identifiers silently (NAMEDATALEN - 1).
MAX_NAME_BYTES: Final = 63
# CONNECTION LIMIT is an int4.
MAX_CONNECTION_LIMIT: Final = 2**31 - 1

# Names PostgreSQL reserves, or that would collide with what every cluster has.
RESERVED_NAMES: Final = frozenset(
    {
        "postgres",
        "template0",
        "template1",
        "public",
        "none",
        "current_user",
        "session_user",
        "current_role",
        "system_user",
    }
)

ENV_CONFIG: Final = "PGINIT_CONFIG"
# The standalone provisioner's variable and default, kept for its users.
ENV_LEGACY_CONFIG: Final = "CONFIG_PATH"
LEGACY_DEFAULT_CONFIG: Final = Path("/config/config.json")


@dataclass(frozen=True)
class PostgresSettings:
    """How to reach PostgreSQL as the admin; libpq's environment fills the rest."""

    dsn: str = ""
    password_file: Path | None = None
    # The admin's password in Vault: a path in the [vault] mount, key "password".
    password_secret: str = ""


# The auth method that Nomad's workload identities log in to (the Nomad agents'
# default jwt_auth_backend_path), and the key of the admin's secret.
DEFAULT_JWT_PATH: Final = "jwt-nomad"
# The identity block that `nomad-pginit render` gives the init task (aud vault.io,
# file = true). Nomad writes its JWT to $NOMAD_SECRETS_DIR/nomad_<name>.jwt
# (client/allocrunner/taskrunner/identity_hook.go), the default [vault] jwt_file.
# Not "vault_default": Nomad reserves the vault_ prefix for the identity of a
# vault block, and warns at every register about one in a task without a vault
# block (nomad/job_endpoint_hooks.go).
IDENTITY_NAME: Final = "vault"
ADMIN_SECRET_KEY: Final = "password"  # noqa: S105 (the key's name)


@dataclass(frozen=True)
class VaultSettings:
    """Where each service's password lives in Vault KV v2, and how to log in with a JWT."""

    mount: str = "secret"
    path: str = "postgres/{service}"
    key: str = "password"
    # The role of the JWT auth method to log in as with the task's workload identity.
    jwt_role: str = ""
    # The JWT auth method's mount.
    jwt_path: str = DEFAULT_JWT_PATH
    # The JWT file; empty: the file Nomad writes for the job's identity block.
    jwt_file: str = ""

    def secret_path(self, service: str) -> str:
        """The KV v2 path of one service's secret, relative to the mount."""
        return self.path.replace("{service}", service)

    def cli_path(self, service: str) -> str:
        """The path as ``vault kv`` commands spell it (``secret/postgres/gitea``)."""
        return f"{self.mount}/{self.secret_path(service)}"


# How the job delivers the services file and runs init-databases.
ONESHOT: Final = "oneshot"  # in the job; a poststart task that provisions and exits
LIVE: Final = "live"  # in a Nomad variable; a sidecar that applies every change
MODES: Final = (ONESHOT, LIVE)
# The job's own variable: its tasks read it with no ACL policy. Their workload
# identity may read exactly nomad/jobs/<job>, .../<group> and .../<group>/<task>
# (acl/acl.go matchingVariablesCapabilitySet), nothing below them: a template that
# may not read its variable fails its task for good, and Nomad then stops
# PostgreSQL, so [job] variable is one of these.
DEFAULT_VARIABLE: Final = "nomad/jobs/postgresql"
READABLE_VARIABLES: Final = (
    DEFAULT_VARIABLE,
    "nomad/jobs/postgresql/postgresql",
    "nomad/jobs/postgresql/postgresql/init-databases",
)
# The same for [job] postgres = "external", whose group is init-databases.
EXTERNAL_READABLE_VARIABLES: Final = (
    DEFAULT_VARIABLE,
    "nomad/jobs/postgresql/init-databases",
    "nomad/jobs/postgresql/init-databases/init-databases",
)
# The variable's item that holds the services file.
VARIABLE_ITEM: Final = "pginit_toml"
# Where PostgreSQL runs: a task of the rendered job, or a cluster outside it (Patroni
# on Nomad, a managed service), which the job's init task reaches at [postgres] dsn.
IN_JOB: Final = "job"
EXTERNAL: Final = "external"
POSTGRES_PLACES: Final = (IN_JOB, EXTERNAL)
# How the init task looks up an external cluster's primary ([job] primary_service):
# consul-template's service (Consul) or nomadService (Nomad's own catalog).
PRIMARY_PROVIDERS: Final = ("consul", "nomad")


@dataclass(frozen=True)
class JobSettings:
    """How `nomad-pginit render` shapes the init-databases task of the Nomad job."""

    mode: str = ONESHOT
    # Live mode: how often the sidecar looks at Vault for rotated passwords.
    interval: int = 10
    # Live mode: the Nomad variable that carries the services file.
    variable: str = DEFAULT_VARIABLE
    # "job": the job runs PostgreSQL; "external": the job is the init task alone.
    postgres: str = IN_JOB
    # External: the service the primary is registered as, in consul-template's
    # "tag.name" form (Patroni's "master.patroni"); empty: [postgres] dsn's hosts.
    primary_service: str = ""
    primary_provider: str = "consul"

    @property
    def live(self) -> bool:
        return self.mode == LIVE

    @property
    def external(self) -> bool:
        return self.postgres == EXTERNAL

    @property
    def readable_variables(self) -> tuple[str, ...]:
        """The variables the init task may read: the job's, its group's, its own. An
        external cluster's job has the group init-databases, not postgresql."""
        return READABLE_VARIABLES if not self.external else EXTERNAL_READABLE_VARIABLES


# CREATE DATABASE's LOCALE_PROVIDER values: libc always, icu from PostgreSQL 15 on (when
# built with ICU), builtin from 17 on.
LOCALE_PROVIDERS: Final = ("libc", "icu", "builtin")


@dataclass(frozen=True)
class CreationOptions:
    """How a service's databases are created (CREATE DATABASE ... WITH): fixed once they
    exist, so a database that differs is reported and kept, never recreated."""

    template: str | None = None
    encoding: str | None = None
    locale: str | None = None
    lc_collate: str | None = None
    lc_ctype: str | None = None
    locale_provider: str | None = None
    icu_locale: str | None = None

    def given(self) -> dict[str, str]:
        """The options the services file sets, by their key."""
        return {
            item.name: value
            for item in fields(self)
            if (value := getattr(self, item.name)) is not None
        }


@dataclass(frozen=True)
class Service:
    """One tenant: a login role, its own databases, a password from Vault."""

    name: str
    # Its first (or only) database: the one its apps are told of (DB_DATABASE).
    database: str
    user: str
    # Revoke CONNECT and TEMPORARY from PUBLIC, so other services cannot connect.
    isolate: bool = True
    # Created inside the service's database when missing.
    extensions: tuple[str, ...] = ()
    # The role's CONNECTION LIMIT; None leaves whatever the role has.
    connection_limit: int | None = None
    # Manage an existing role that has CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS,
    # or is a member of a superuser or a privileged role (refused otherwise).
    allow_privileged_role: bool = False
    # Given inline only by the JSON format; otherwise read from Vault.
    password: Secret | None = field(default=None, compare=False, repr=False)
    # Its other databases (databases = [...] lists database first, then these).
    more_databases: tuple[str, ...] = ()
    creation: CreationOptions = CreationOptions()
    # Roles given read-only access to its databases (CONNECT, USAGE, SELECT, and
    # default privileges for what the service creates later).
    readers: tuple[str, ...] = ()
    # ALTER ROLE user IN DATABASE db SET name = value, in each of its databases.
    settings: tuple[tuple[str, str], ...] = ()
    # Roles the service's role is made a member of (GRANT group TO user).
    member_of: tuple[str, ...] = ()
    # Let member_of name a role that reaches beyond the service's databases.
    allow_privileged: bool = False

    @property
    def databases(self) -> tuple[str, ...]:
        """Every database of the service, its first one first."""
        return (self.database, *self.more_databases)


@dataclass(frozen=True)
class Spec:
    """The whole services file."""

    source: Path
    postgres: PostgresSettings
    vault: VaultSettings
    services: tuple[Service, ...]
    job: JobSettings = JobSettings()
