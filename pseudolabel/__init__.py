"""pseudolabel: semi-automatic image labelling with active learning, reviewed in Label Studio.

Importing this package does nothing beyond defining names: no network, no settings files,
no model loading. Models load only from paths the config names.
"""

__version__ = "0.1.0"
