"""Git and DVC workspaces: locks on shared repository state, worktrees, experiments. No Prefect."""
