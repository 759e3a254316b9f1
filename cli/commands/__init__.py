"""The command groups; each module registers its commands on the root application."""
