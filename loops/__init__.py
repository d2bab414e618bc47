"""The loops users run, each a short module composing the library (see the README, "Architecture")."""
