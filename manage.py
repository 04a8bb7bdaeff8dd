#!/usr/bin/env python
"""Django's command-line utility for administrative tasks.

While Parley runs (`make run`), plain ``python manage.py ...`` uses its services (core.launcher);
with nothing running, a command says in one line how to start it, and exits with status 1.
"""

import os
import shlex
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    from django.core.management import execute_from_command_line

    from core.launcher import ServicesNotRunning

    try:
        execute_from_command_line(sys.argv)
    except ServicesNotRunning as exc:
        exc.command = shlex.join(sys.argv[1:])
        sys.exit(f"manage.py: {exc}")


if __name__ == "__main__":
    main()
