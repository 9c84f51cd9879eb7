"""What a plan says but never changes: how an existing database was created (fixed for
good), and settings on a service's role that the services file does not list."""

from __future__ import annotations

from nomad_pginit.spec import Service
from nomad_pginit.state import ClusterState, DatabaseState

# Another name PostgreSQL accepts for an encoding (pg_char_to_encoding's aliases).
_ENCODING_ALIASES = {"UNICODE": "UTF8"}


def plan_notes(service: Service, cluster: ClusterState) -> list[str]:
    """One line for each thing the service's file asks for that nomad-pginit will not
    change: a creation option of an existing database that differs, and a setting of
    the service's role in its database that the file does not list."""
    notes: list[str] = []
    for name in service.databases:
        database = cluster.databases.get(name)
        if database is not None:
            notes += [
                f'database "{name}": {option} is {have!r}, the services file asks for '
                f"{want!r}; it cannot change once the database exists, so it is kept as it is "
                "(to change it: dump the database, create it anew, restore)"
                for option, have, want in creation_differences(service, database)
            ]
        listed = {setting for setting, _ in service.settings}
        for setting, value in sorted(cluster.role_settings.get((name, service.user), {}).items()):
            if setting not in listed:
                notes.append(
                    f'role "{service.user}" has {setting} = {value!r} in database "{name}", '
                    "which the services file does not list: kept (add it to the service's "
                    "settings to manage it, or ALTER ROLE ... RESET it by hand)"
                )
    return notes


def creation_differences(service: Service, database: DatabaseState) -> list[tuple[str, str, str]]:
    """(option, what the database has, what the file asks for) for each that differs.
    A template cannot be told from the database it made, so it is not compared."""
    given = service.creation.given()
    differences: list[tuple[str, str, str]] = []
    encoding = given.get("encoding")
    if encoding is not None and _encoding_key(encoding) != _encoding_key(database.encoding):
        differences.append(("encoding", database.encoding, encoding))
    provider = given.get("locale_provider")
    if provider is not None and provider != database.locale_provider:
        differences.append(("locale_provider", database.locale_provider, provider))
    effective = provider or database.locale_provider
    locale = given.get("locale")
    wanted = {
        "lc_collate": given.get("lc_collate", locale if effective == "libc" else None),
        "lc_ctype": given.get("lc_ctype", locale if effective == "libc" else None),
    }
    for option, have in (("lc_collate", database.lc_collate), ("lc_ctype", database.lc_ctype)):
        want = wanted[option]
        if want is not None and _locale_key(want) != _locale_key(have):
            differences.append((option, have, want))
    provider_locale = given.get("icu_locale", locale if effective != "libc" else None)
    if provider_locale is not None and _locale_key(provider_locale) != _locale_key(
        database.provider_locale or ""
    ):
        option = "icu_locale" if "icu_locale" in given else "locale"
        differences.append((option, database.provider_locale or "", provider_locale))
    return differences


def _encoding_key(name: str) -> str:
    key = name.upper().replace("-", "").replace("_", "")
    return _ENCODING_ALIASES.get(key, key)


def _locale_key(name: str) -> str:
    """en_US.UTF-8, en_US.utf8 and (ICU) en-US name the same locale."""
    if name.upper() == "POSIX":
        return "c."  # the server stores POSIX as C
    language, _, codeset = name.partition(".")
    return language.lower().replace("-", "_") + "." + codeset.lower().replace("-", "")
