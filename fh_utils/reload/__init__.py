"""Re-running edited modules in place: the engine, the import graph, and what a re-run undoes."""
