"""The chaos run: a pair behind HAProxy under random faults, then checks of what was promised."""
