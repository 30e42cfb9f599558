"""Built-in prompt sources (tasks), each with what its demo needs."""
