"""Flow runs whose process died (a worker killed, a host lost) are marked Crashed.

A run's process that dies outright cannot report its own end, so Prefect keeps showing it
Running. Prefect's documented remedy on a self-hosted server (docs: "How to detect and
respond to zombie flows"): flow runs of deployments emit heartbeat events
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set for the workers' flow runs), and an automation marks
a run Crashed when its heartbeats stop for ZOMBIE_SECONDS without a final state.

    python -m services.zombies   # create the automation on PREFECT_API_URL unless it exists
"""

from __future__ import annotations

import os
import sys

AUTOMATION = "crash-zombie-flow-runs"
HEARTBEAT_SECONDS = 30  # Prefect's minimum for heartbeat events
# Three missed heartbeats, as Prefect's guide; SERVICES_ZOMBIE_SECONDS changes it.
ZOMBIE_SECONDS = 90


def zombie_seconds() -> int:
    return int(os.environ.get("SERVICES_ZOMBIE_SECONDS") or ZOMBIE_SECONDS)


def ensure_automation() -> str:
    """Create the automation (idempotent); 'exists' or 'created'."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=AUTOMATION)
        return "exists"
    except ValueError:
        pass
    Automation(
        name=AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=zombie_seconds()),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {zombie_seconds()} s: its process died.",
            )
        ],
    ).create()
    return "created"


if __name__ == "__main__":
    print(ensure_automation())  # noqa: T201 - read by services.prefect_server
    sys.exit(0)
