"""The commands, one module per group; cli/main.py registers them on the app of cli/app.py."""
