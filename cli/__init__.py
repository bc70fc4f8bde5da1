"""The `mirrorfs` command line: thin typer commands over the rooms below.

The only place an event loop is started for a command.
May import every room.
"""
