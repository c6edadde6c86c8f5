"""Git and DVC workspaces: running DVC, worktrees, experiments (the locks on shared repository
state are stage_runtime.locks: stages take them too). No Prefect."""
