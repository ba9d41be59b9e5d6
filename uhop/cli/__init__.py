"""The ``uhop`` command (filled in below)."""
def main():  # placeholder replaced by the real CLI
    raise SystemExit("uhop CLI not built yet")
