"""The stack's secrets: generated once with `secrets`, kept in `.services/credentials.json`
(mode 0600, never in git), reused by every later `up` (the database roles and the S3
identity must keep matching the data already stored)."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from services.process import write_private

_ACCESS_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Credentials:
    s3_access_key: str
    s3_secret_key: str
    mlflow_db_password: str
    prefect_db_password: str

    @classmethod
    def generate(cls) -> Credentials:
        # URL-safe characters only: they go into database URLs and SQL literals unquoted.
        return cls(
            s3_access_key="TAXI" + "".join(secrets.choice(_ACCESS_KEY_ALPHABET) for _ in range(16)),
            s3_secret_key=secrets.token_urlsafe(30),
            mlflow_db_password=secrets.token_urlsafe(24),
            prefect_db_password=secrets.token_urlsafe(24),
        )


def load_or_create(path: Path) -> Credentials:
    """The stack's credentials, generated and written (0600) on the first call."""
    if path.exists():
        data = json.loads(path.read_text())
        names = {f.name for f in fields(Credentials)}
        if set(data) != names:
            raise ValueError(f"{path}: expected the keys {sorted(names)}, found {sorted(data)}")
        path.chmod(0o600)
        return Credentials(**data)
    creds = Credentials.generate()
    write_private(path, json.dumps(asdict(creds), indent=1) + "\n")
    return creds
