"""Ready agents, each runnable as its own process: `mesh agent run agents.<module>:agent`."""
