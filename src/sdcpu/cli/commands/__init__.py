"""The commands, one module per group; each registers its commands on the app of cli/app.py."""
