"""`make demo`: the init-databases task, played the way a Nomad allocation plays it.

Starts a throwaway PostgreSQL cluster and an OpenBao dev server (Vault's API),
writes a password for each service of the committed services file (today's
seven) and the superuser's into Vault, sets up Vault's JWT auth method as the
README says (trusting a key that plays the Nomad agents' part), renders the
task's services file as the job's template block does, writes the JWT that
Nomad writes for the task's identity block, then runs `nomad-pginit run` twice
with the environment Nomad gives a poststart task (no Vault token: the task
logs in with its JWT):
the first run provisions everything, the second finds nothing to do. Finally
it logs in as one service to prove it, and stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import hvac
import psycopg

# The throwaway servers (sandbox/) live beside the package, not in it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nomad_pginit import render
from nomad_pginit import spec as specs
from sandbox import (
    ThrowawayPostgres,
    ThrowawayVault,
    WorkloadIdentities,
    describe_pg,
)

ROOT = Path(__file__).resolve().parent.parent
SERVICES_FILE = ROOT / "jobs/services/databases/postgresql/pginit.toml"


def step(text: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}==> {text}{plain}", flush=True)


def task_services_file(port: int) -> tuple[str, list[str]]:
    """The services file as the job's template block renders it into the task's local/.

    In the job, postgres is 127.0.0.1:5432 in the group's network namespace;
    here the cluster has its own port.
    """
    spec = specs.load(SERVICES_FILE)
    text = render.Templates(local_dir=None).services_file(spec)
    text = text.replace(":5432/", f":{port}/")
    return text, [service.name for service in spec.services]


def run_task(env: dict[str, str], label: str) -> int:
    step(f"nomad-pginit run ({label})")
    completed = subprocess.run([sys.executable, "-m", "nomad_pginit", "run"], env=env, check=False)
    print(f"--- exit code {completed.returncode}")
    return completed.returncode


def main() -> int:
    step("starting a throwaway PostgreSQL cluster and an OpenBao dev server")
    with ThrowawayPostgres() as pg, ThrowawayVault() as vault:
        print(f"postgresql: {describe_pg(pg.found_bindir)}, on 127.0.0.1:{pg.port}")
        print(f"OpenBao (Vault API) on {vault.addr}")

        alloc = Path(tempfile.mkdtemp(prefix="pginit-alloc-"))
        task_dir = alloc / "init-databases" / "local"
        secrets_dir = alloc / "init-databases" / "secrets"
        services_text, names = task_services_file(pg.port)
        step(f"vault kv put secret/postgres/<service> for {len(names)} services and the admin")
        client = hvac.Client(url=vault.addr, token=vault.token)
        client.secrets.kv.v2.create_or_update_secret(
            path=render.ADMIN_VAULT_PATH, secret={"password": pg.password}, mount_point="secret"
        )
        print(f"  secret/{render.ADMIN_VAULT_PATH}: the superuser's password (not shown)")
        passwords = {}
        for name in names:
            passwords[name] = secrets.token_urlsafe(32)
            client.secrets.kv.v2.create_or_update_secret(
                path=f"postgres/{name}",
                secret={"password": passwords[name]},
                mount_point="secret",
            )
            print(f"  secret/postgres/{name}: password written (not shown)")

        step("vault auth enable -path=jwt-nomad jwt; the postgresql policy and role")
        identities = WorkloadIdentities()
        identities.configure(client)
        print("  auth/jwt-nomad trusts the key that signs the task's identity here")

        # The allocation's directories, as Nomad lays them out for the task: the
        # identity block's JWT in secrets/, the services file in local/.
        task_dir.mkdir(parents=True)
        secrets_dir.mkdir(mode=0o700)
        jwt_file = secrets_dir / f"nomad_{specs.IDENTITY_NAME}.jwt"
        jwt_file.write_text(identities.sign(), encoding="utf-8")
        (task_dir / "pginit.toml").write_text(services_text, encoding="utf-8")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PG", "VAULT_", "NOMAD_"))
        }
        env |= {
            "NOMAD_ALLOC_ID": "5a1b2c3d-0000-4000-8000-00000000demo",
            "NOMAD_SHORT_ALLOC_ID": "5a1b2c3d",
            "NOMAD_JOB_NAME": "postgresql",
            "NOMAD_GROUP_NAME": "postgresql",
            "NOMAD_TASK_NAME": "init-databases",
            "NOMAD_ALLOC_DIR": str(alloc / "alloc"),
            "NOMAD_TASK_DIR": str(task_dir),
            "NOMAD_SECRETS_DIR": str(secrets_dir),
            "VAULT_ADDR": vault.addr,  # no token: the task logs in with its JWT
            "PGINIT_CONFIG": str(task_dir / "pginit.toml"),
        }
        first = run_task(env, "first deployment: everything is created")
        second = run_task(env, "redeploy: nothing to do")

        service = "gitea" if "gitea" in passwords else names[0]
        step(f"logging in as {service} with its password from Vault")
        conninfo = pg.conninfo(dbname=service, user=service, password=passwords[service])
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE hello (id int)")
            row = conn.execute("SELECT current_user, current_database()").fetchone()
            print(f"  connected as {row[0] if row else '?'} to database {row[1] if row else '?'}")
            print("  created table public.hello")
        step("stopping PostgreSQL and OpenBao")
        shutil.rmtree(alloc)
    ok = first == 0 and second == 0
    print("\ndemo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
