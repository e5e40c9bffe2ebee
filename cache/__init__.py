"""Delta store on disk and in memory, task-weight cache and hot-merge cache."""
