"""Team-mode services: PostgreSQL, SeaweedFS (S3), an MLflow server, a Prefect server and its
process workers, all real processes on 127.0.0.1 with their state under `.services/`.

    python -m services up | down | status | dvc-remote [--repo PATH]

See services/README-team.md. Nothing here does any work at import time.
"""
