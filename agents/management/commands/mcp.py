import json as json_module

from django.core.management import BaseCommand, CommandError

from agents.mcp import McpError, mcp_tools_list_sync
from agents.models import McpServer


class Command(BaseCommand):
    help = "MCP tool servers: list the registered ones, check that they answer, list one's tools."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="the registered servers: slug, transport, where, allowed tools, groups")
        check = sub.add_parser("check", help="connect to each enabled server (or those named) and list its tools")
        check.add_argument("slugs", nargs="*", metavar="SLUG")
        tools = sub.add_parser("tools", help="the tools server SLUG lists now, and which are allowed")
        tools.add_argument("slug", metavar="SLUG")
        tools.add_argument(
            "--json", action="store_true", help="print JSON: [{name, description, allowed, input_schema}]"
        )

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)

    def handle_list(self, **options):
        servers = McpServer.objects.prefetch_related("groups")
        if not servers:
            self.stdout.write("No MCP servers registered (add them in the admin: Agents › MCP servers).")
        for server in servers:
            allowed = "all" if server.allow_all_tools else (", ".join(server.allowed_tools) or "none")
            groups = ", ".join(g.name for g in server.groups.all()) or "everyone"
            state = "enabled" if server.enabled else "disabled"
            self.stdout.write(
                f"{server.slug}\t{server.transport}\t{server.target}\t{state}\tallowed: {allowed}\tgroups: {groups}"
                + ("\tshared" if server.shared else "")
            )

    def handle_check(self, *, slugs: list[str], **options):
        servers = McpServer.objects.filter(slug__in=slugs) if slugs else McpServer.objects.filter(enabled=True)
        missing = set(slugs) - {s.slug for s in servers}
        if missing:
            raise CommandError(f"No MCP server {', '.join(sorted(missing))}.")
        failed = 0
        for server in servers:
            try:
                tools = mcp_tools_list_sync(server)
            except McpError as exc:
                failed += 1
                self.stdout.write(f"{server.slug}: FAILED: {exc}")
                continue
            allowed = sum(server.tool_allowed(t.name) for t in tools)
            self.stdout.write(f"{server.slug}: ok, {len(tools)} tool(s), {allowed} allowed")
        if failed:
            raise CommandError(f"{failed} MCP server(s) failed.")

    def handle_tools(self, *, slug: str, json: bool = False, **options):
        server = McpServer.objects.filter(slug=slug).first()
        if server is None:
            raise CommandError(f"No MCP server {slug!r}.")
        try:
            tools = mcp_tools_list_sync(server)
        except McpError as exc:
            raise CommandError(str(exc)) from exc
        if json:
            self.stdout.write(
                json_module.dumps(
                    [
                        {
                            "name": t.name,
                            "description": t.description,
                            "allowed": server.tool_allowed(t.name),
                            "input_schema": t.input_schema,
                        }
                        for t in tools
                    ]
                )
            )
            return
        for tool in tools:
            mark = "allowed" if server.tool_allowed(tool.name) else "not allowed"
            self.stdout.write(f"{tool.name}\t{mark}\t{tool.description.splitlines()[0] if tool.description else ''}")
