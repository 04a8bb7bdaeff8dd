"""How Parley drives a browser: Debian's Chromium through Playwright (FACTS.md).

Playwright's own browser download fails on these machines, so the executable is always given.
"""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # runs as root in containers
    "--disable-gpu",  # no screen
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
