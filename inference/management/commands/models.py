"""``manage.py models``: list, add, check, benchmark, enable and disable models, and pick the default."""

import json

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from accounts.audit import AuditedCommand
from core.errors import ParleyError
from inference import registry
from inference.routing import deployment_states, implicit_deployment
from inference.selectors import deployment_tokens_per_s, model_config_get, model_config_list


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(AuditedCommand):
    help = "Manage the models users can chat with."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        listing = actions.add_parser("list", help="List the registered models.")
        listing.add_argument("--json", action="store_true", help="Print a JSON list.")

        add = actions.add_parser(
            "add",
            help="Register a local GGUF file (llama.cpp), or with --base-url a model on an OpenAI-compatible server.",
        )
        add.add_argument(
            "model",
            metavar="PATH_OR_NAME",
            help="GGUF path or package:<package>/<file>; with --base-url, a model name.",
        )
        add.add_argument("--slug", default="", help="Default: the file stem or model name, slugified.")
        add.add_argument("--name", default="", help="Display name. Default: the file stem or model name.")
        add.add_argument("--base-url", default="", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1.")
        add.add_argument("--api-key-env", default="", help="Environment variable holding the server's API key.")
        add.add_argument(
            "--context-window",
            type=positive_int,
            help=f"Tokens. Default for a GGUF: its context length, at most {registry.LOCAL_CONTEXT_WINDOW_CAP}.",
        )
        add.add_argument("--default", action="store_true", help="Make it the default model.")

        check = actions.add_parser(
            "check",
            help="Generate a few tokens (8, temperature 0); print time to first token, tokens/s and the text.",
        )
        check.add_argument("slug", nargs="?", help="Default: the default model.")

        bench_help = (
            "Time several generations after one warm-up and print JSON: time to first token (ms) p50/max and "
            "tokens/s p50/min, where tokens/s = (completion tokens - 1) / (seconds from the first token to the "
            "end of the stream); completion_tokens is the total over the runs."
        )
        bench = actions.add_parser("bench", help=bench_help, description=bench_help)
        bench.add_argument("slug", nargs="?", help="Default: the default model.")
        bench.add_argument("--runs", type=positive_int, default=5, help="Measured runs (default 5).")
        bench.add_argument(
            "--max-tokens", type=positive_int, default=64, help="Completion tokens per run (default 64)."
        )

        for name, text in [
            ("set-default", "Make a model the default (it must be enabled)."),
            ("enable", "Offer a model to users."),
            ("disable", "Hide a model from users (not the default one)."),
        ]:
            actions.add_parser(name, help=text).add_argument("slug")

    def handle(self, *args, **options) -> None:
        action = options["action"]
        try:
            getattr(self, "handle_" + action.replace("-", "_"))(options)
        except ParleyError as exc:
            raise CommandError(exc.detail) from exc

    def handle_list(self, options: dict) -> None:
        rows = [
            {
                "slug": config.slug,
                "display_name": config.display_name,
                "provider": config.provider,
                "model": config.model,
                "context_window": config.context_window,
                "is_default": config.is_default,
                "is_enabled": config.is_enabled,
            }
            for config in model_config_list(enabled_only=False)
        ]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        header = ["SLUG", "NAME", "PROVIDER", "MODEL", "CONTEXT", "DEFAULT", "ENABLED"]
        table = [header] + [
            [
                row["slug"],
                row["display_name"],
                row["provider"],
                row["model"],
                str(row["context_window"]),
                "yes" if row["is_default"] else "",
                "yes" if row["is_enabled"] else "no",
            ]
            for row in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())

    def handle_add(self, options: dict) -> None:
        common = {
            "slug": options["slug"],
            "display_name": options["name"],
            "context_window": options["context_window"],
            "is_default": options["default"],
        }
        if options["base_url"]:
            config = registry.model_config_add_remote(
                name=options["model"], base_url=options["base_url"], api_key_env=options["api_key_env"], **common
            )
        else:
            if options["api_key_env"]:
                raise CommandError("--api-key-env needs --base-url: local GGUF models have no API key.")
            self.stdout.write(f"Reading GGUF metadata of {options['model']}...")
            config, metadata = registry.model_config_add_local(model=options["model"], **common)
            context = f"{metadata.context_length} tokens" if metadata.context_length else "unknown"
            self.stdout.write(f"  architecture:   {metadata.architecture}")
            self.stdout.write(f"  context length: {context}")
            self.stdout.write(f"  chat template:  {'yes' if metadata.has_chat_template else 'no'}")
            self.stdout.write(f"  quantization:   {metadata.quantization}")
            self.stdout.write(f"  file size:      {metadata.size_bytes / 2**20:.1f} MiB")
            if not metadata.has_chat_template:
                self.stderr.write(
                    self.style.WARNING(
                        "Warning: the file has no chat template; Parley cannot chat with this model "
                        "(generations fail with model_unavailable)."
                    )
                )
        default = ", default" if config.is_default else ""
        summary = f"{config.provider}, context window {config.context_window} tokens{default}"
        self.stdout.write(self.style.SUCCESS(f"Registered {config.slug!r} ({summary})."))

    def _config(self, slug: str | None):
        return registry.model_config_by_slug(slug=slug) if slug else model_config_get()

    def handle_check(self, options: dict) -> None:
        config = self._config(options["slug"])
        deployments = list(config.deployments.all())
        if deployments:
            self._check_deployments(config, deployments)
            return
        self.stdout.write(f"Checking {config.slug!r} ({config.provider}: {config.model})...")
        deployment = implicit_deployment(config)
        rate = deployment_tokens_per_s(labels=[deployment.label])[deployment.label]
        self.stdout.write(f"  state:               {deployment_states([deployment])[0].summary(deployment, rate)}")
        try:
            probe = registry.model_config_probe(config=config)
        except ParleyError as exc:
            raise CommandError(f"Check of {config.slug!r} failed: {exc.code}: {exc.detail}") from exc
        except Exception as exc:  # A health check reports every failure, not only the expected ones.
            raise CommandError(f"Check of {config.slug!r} failed: upstream_error: {type(exc).__name__}: {exc}") from exc
        if not probe.completion_tokens:
            raise CommandError(f"Check of {config.slug!r} failed: empty_answer: the model generated no tokens.")
        rate = f"{probe.tokens_per_s:.1f}" if probe.tokens_per_s is not None else "n/a"
        self.stdout.write(f"  time to first token: {probe.ttft_ms:.0f} ms")
        self.stdout.write(f"  tokens/s:            {rate} ({probe.completion_tokens} completion tokens)")
        self.stdout.write(f"  text:                {probe.text!r}")
        self.stdout.write(self.style.SUCCESS("OK"))

    def _check_deployments(self, config, deployments) -> None:
        """Probe each deployment of ``config``; print its result, the state every process shares
        (healthy, cooling down until T or failing, p50 TTFT, last error) and its tokens/s over the last hour.

        Fail when none answers: the model cannot serve (its fallbacks are checked on their own).
        """
        self.stdout.write(f"Checking {config.slug!r}: {len(deployments)} deployments ({config.routing_strategy})...")
        answered = 0
        rates = deployment_tokens_per_s(labels=[d.label for d in deployments])
        for deployment, state in zip(deployments, deployment_states(deployments), strict=True):
            where = deployment.base_url or deployment.model
            self.stdout.write(f"  {deployment.label} ({deployment.provider}: {where})")
            self.stdout.write(f"    state: {state.summary(deployment, rates[deployment.label])}")
            try:
                probe = registry.model_config_probe(config=config, deployment=deployment)
            except ParleyError as exc:
                self.stdout.write(self.style.ERROR(f"    check: failed: {exc.code}: {exc.detail}"))
                continue
            except Exception as exc:  # A health check reports every failure, not only the expected ones.
                self.stdout.write(self.style.ERROR(f"    check: failed: upstream_error: {type(exc).__name__}: {exc}"))
                continue
            answered += 1
            rate = f"{probe.tokens_per_s:.1f} tokens/s" if probe.tokens_per_s is not None else "tokens/s n/a"
            self.stdout.write(f"    check: OK, first token {probe.ttft_ms:.0f} ms, {rate}, {probe.text!r}")
        fallbacks = [link.fallback.slug for link in config.fallback_links.select_related("fallback")]
        if fallbacks:
            self.stdout.write(f"  fallbacks: {', '.join(fallbacks)}")
        if not answered:
            raise CommandError(f"Check of {config.slug!r} failed: no deployment answered.")
        self.stdout.write(self.style.SUCCESS(f"OK ({answered} of {len(deployments)} deployments answered)"))

    def handle_bench(self, options: dict) -> None:
        config = self._config(options["slug"])
        try:
            result = registry.model_config_bench(config=config, runs=options["runs"], max_tokens=options["max_tokens"])
        except ParleyError as exc:
            raise CommandError(f"Benchmark of {config.slug!r} failed: {exc.code}: {exc.detail}") from exc
        self.stdout.write(json.dumps(result))

    def handle_set_default(self, options: dict) -> None:
        config = registry.model_config_set_default(slug=options["slug"])
        self.stdout.write(self.style.SUCCESS(f"{config.slug!r} is the default model."))
        if settings.LLM_DEFAULT_MODEL and settings.LLM_DEFAULT_MODEL != config.slug:
            self.stderr.write(
                self.style.WARNING(
                    f"Warning: LLM_DEFAULT_MODEL={settings.LLM_DEFAULT_MODEL} overrides it while that model is enabled."
                )
            )

    def handle_enable(self, options: dict) -> None:
        config = registry.model_config_set_enabled(slug=options["slug"], enabled=True)
        self.stdout.write(self.style.SUCCESS(f"{config.slug!r} is enabled."))

    def handle_disable(self, options: dict) -> None:
        config = registry.model_config_set_enabled(slug=options["slug"], enabled=False)
        self.stdout.write(self.style.SUCCESS(f"{config.slug!r} is disabled."))
