"""Coordination patterns on the log: blackboards, consensus votes, workflows and their
orchestrator, step-input templates, and the ids their events get."""
