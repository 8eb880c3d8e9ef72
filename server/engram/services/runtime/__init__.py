"""The agent runtime: the loop, its tools, its rules and its context window."""
