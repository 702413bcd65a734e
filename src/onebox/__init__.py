"""onebox: the software of an LLM training-and-inference appliance."""

__version__ = "0.1.0"
