"""Inputs: sources of events that commit what they receive to the spool.

Each input is its own module, imported where it is used (``edge_agent.agent`` imports the
polling inputs only when they are configured, for the memory their libraries take).
"""
