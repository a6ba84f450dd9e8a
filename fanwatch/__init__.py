"""fanwatch: listen to a rotating machine, tell its operating state and whether it sounds anomalous."""

__version__ = "0.1.0"
